# WorldCompass-rs tasks. `just --list` shows them all.
# On a fresh machine: `python3 -m pip install rust-just` gives you `just`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where `just train` puts the default run.
run := "file://" + justfile_directory() + "/runs/embedded"
pipeline := "pipelines/embedded.toml"
wc := "cargo run --quiet --bin worldcompass --"

# List the recipes.
default:
    @just --list

# Install what the tests and the Python analysis path need (S3 test server, pyarrow, polars), and build.
setup:
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' pyarrow polars numpy safetensors pillow
    cargo build --workspace --tests --bins

# Run the main job on the embedded default: init (if needed) and train, resuming what is committed.
train iters="" run=run pipeline=pipeline:
    {{wc}} train --run {{run}} --pipeline {{pipeline}} {{ if iters == "" { "" } else { "--iters " + iters } }}

# Run one stage as a batch job, e.g. `just stage rollout --iter 3 --shard 1/4`.
stage name *args:
    {{wc}} stage {{name}} --run {{run}} {{args}}

# What is committed in a run.
status run=run:
    {{wc}} status --run {{run}}

# Run the whole test suite (installs the test dependencies first).
test: setup
    if cargo nextest --version >/dev/null 2>&1; then cargo nextest run --workspace --no-fail-fast; else cargo test --workspace --no-fail-fast; fi

# Regenerate schemas/ after changing a schema in crates/schemas.
schemas:
    {{wc}} schemas --write schemas

# Lints.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
