"""Independent reader of a run's tables (pyarrow and polars, no project code).

Usage: python3 tests/python/read_run.py RUN_DIR SCHEMAS_DIR

Checks every committed table against the documented schema in schemas/tables/
(column names, types, nullability), reads the reward log with
polars.scan_parquet over the run's reward_log glob, and prints a JSON object
with the per-iteration mean IF and VQ and the row counts, for the caller to
compare with its own numbers.
"""
import json
import pathlib
import sys

import polars as pl
import pyarrow.parquet as pq

ARROW_TYPES = {
    "int64": "int64",
    "float32": "float",
    "float64": "double",
    "boolean": "bool",
    "utf8": "string",
    "list_uint8": "list<element: uint8>",
    "list_float32": "list<element: float>",
}


def check_table(path: pathlib.Path, schema: dict) -> int:
    table = pq.read_table(path)
    fields = {f.name: f for f in table.schema}
    for spec in schema["fields"]:
        name = spec["name"]
        if name not in fields:
            raise SystemExit(f"{path}: column {name} missing")
        found = str(fields[name].type).replace("item:", "element:")
        if found != ARROW_TYPES[spec["type"]]:
            raise SystemExit(f"{path}: column {name} is {found}, schema says {spec['type']}")
        if not spec["nullable"] and table.column(name).null_count:
            raise SystemExit(f"{path}: column {name} has nulls")
    return table.num_rows


def main() -> None:
    run = pathlib.Path(sys.argv[1])
    schemas = pathlib.Path(sys.argv[2]) / "tables"
    load = lambda name: json.loads((schemas / f"{name}.json").read_text())
    rows = {
        "prompts": check_table(run / "data/prompts.parquet", load("prompts")),
        "groups": check_table(run / "data/groups.parquet", load("groups")),
    }
    log_files = sorted((run / "reward_log").glob("*.parquet"))
    for f in log_files:
        check_table(f, load("selection"))
    log = (
        pl.scan_parquet(str(run / "reward_log" / "**" / "*.parquet"))
        .group_by("iter")
        .agg(
            pl.col("if_score").mean().alias("mean_if"),
            pl.col("vq_score").mean().alias("mean_vq"),
            pl.len().alias("rows"),
            pl.col("selected").sum().alias("selected"),
        )
        .sort("iter")
        .collect()
    )
    print(json.dumps({"tables": rows, "reward_log": log.to_dicts()}))


if __name__ == "__main__":
    main()
