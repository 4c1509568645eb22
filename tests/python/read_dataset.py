"""Independent reader of a dataset written by `worldcompass data` (pyarrow,
polars, safetensors with numpy; no project code).

Usage: python3 tests/python/read_dataset.py STORE_DIR SCHEMAS_DIR

Checks every table against schemas/tables/*.json and every tensor file
against schemas/tensors/*.json, checks that the recorded poses follow the
recorded actions (0.12 units and 5 degrees per frame), and prints a JSON
summary.
"""
import json
import math
import pathlib
import sys

import numpy as np
import polars as pl
from safetensors.numpy import load_file

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from read_run import check_table  # noqa: E402


def main() -> None:
    root = pathlib.Path(sys.argv[1]) / "dataset"
    schemas = pathlib.Path(sys.argv[2])
    table_schema = lambda n: json.loads((schemas / "tables" / f"{n}.json").read_text())
    tensor_schema = lambda n: json.loads((schemas / "tensors" / f"{n}.json").read_text())
    rows = {}
    for name, path in [
        ("prompts", "prompts.parquet"),
        ("sequences", "sequences.parquet"),
        ("pretrain_clips", "pretrain/clips.parquet"),
        ("pretrain_poses", "pretrain/poses.parquet"),
    ]:
        rows[name] = check_table(root / path, table_schema(name))

    first = load_file(str(root / "first_frames.safetensors"))
    spec = tensor_schema("first_frames")["tensors"][0]
    frames = first[spec["name"]]
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3, frames.shape
    assert frames.shape[0] == rows["prompts"], (frames.shape, rows["prompts"])

    clips = pl.read_parquet(root / "pretrain/clips.parquet")
    poses = pl.read_parquet(root / "pretrain/poses.parquet").sort(["clip_id", "frame"])
    shapes = {}
    for f in sorted((root / "pretrain").glob("frames-*.safetensors")):
        t = load_file(str(f))["frames"]
        assert t.dtype == np.uint8 and t.ndim == 5 and t.shape[4] == 3
        shapes[f.name] = list(t.shape)

    # Poses follow actions: per frame, translation 0.12 per held axis, 5 deg per held rotation.
    worst = 0.0
    for clip in clips.iter_rows(named=True):
        p = poses.filter(pl.col("clip_id") == clip["clip_id"])
        x, z = p["x"].to_numpy(), p["z"].to_numpy()
        yaw, pitch = p["yaw_deg"].to_numpy(), p["pitch_deg"].to_numpy()
        for w, mask in enumerate(clip["actions"]):
            for f in range(4 * w, 4 * w + 4):
                axes = ((mask >> 0) & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1) + ((mask >> 3) & 1)
                step = math.hypot(x[f + 1] - x[f], z[f + 1] - z[f])
                worst = max(worst, abs(step - 0.12 * math.sqrt(axes)))
                dyaw = 5.0 * (((mask >> 7) & 1) - ((mask >> 6) & 1))
                dpitch = 5.0 * (((mask >> 4) & 1) - ((mask >> 5) & 1))
                worst = max(worst, abs(yaw[f + 1] - yaw[f] - dyaw), abs(pitch[f + 1] - pitch[f] - dpitch))

    windows = sum(len(a) for a in clips["actions"])
    print(json.dumps({
        "rows": rows,
        "first_frames": list(frames.shape),
        "frame_files": shapes,
        "combined_share": clips["combined_windows"].sum() / windows,
        "worst_pose_error": worst,
        "kinds": sorted(pl.read_parquet(root / "sequences.parquet")["kind"].unique().to_list()),
    }))


if __name__ == "__main__":
    main()
