# WorldCompass-rs tasks. `just --list` shows them all.
# On a fresh machine (the README's two commands):
#   python3 -m venv .venv && .venv/bin/pip install rust-just && .venv/bin/just train
# Every Python tool (`just` itself, the S3 test server, pyarrow, polars,
# PyTorch for the bench) lives in the project's virtual environment .venv/,
# never in the system Python (which Debian and Ubuntu manage: PEP 668).

set shell := ["bash", "-euo", "pipefail", "-c"]

# The project's virtual environment: first on PATH in every recipe, so that
# `python3`, `pip` and `moto_server` (and the tests that call them) are its own.
venv := justfile_directory() / ".venv"
export PATH := venv / "bin" + ":" + env_var("PATH")

# Where `just train` puts the default run.
run := "file://" + justfile_directory() + "/runs/embedded"
pipeline := "pipelines/embedded.toml"
# Not `--quiet`: the first build takes minutes and shows cargo's progress.
wc := "cargo run --bin worldcompass --"

# List the recipes.
default:
    @just --list

# The venv module comes with Python; on Debian or Ubuntu it may need `apt install python3-venv`.
# Create the project's virtual environment .venv/ if it is missing.
venv:
    [ -x "{{venv}}/bin/python3" ] || python3 -m venv "{{venv}}"

# Install what the tests and the Python analysis path need (S3 test server, pyarrow, polars) into .venv/, and build.
setup: venv
    "{{venv}}/bin/python3" -m pip install --quiet --disable-pip-version-check 'moto[server]' pyarrow polars numpy safetensors pillow pyyaml
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

# Where the embedded dataset and the base model live. The dataset is
# regenerated deterministically; models/base holds the committed pre-training
# checkpoint, and `just pretrain` resumes from it.
data := "file://" + justfile_directory() + "/runs/data"
base := "file://" + justfile_directory() + "/models/base"

# Write the embedded dataset (prompts, sequences, ground-truth pre-training clips).
data clips="3000":
    {{wc}} data --out {{data}} --pretrain-clips {{clips}} --pretrain-windows 3 --seed 1

# Pre-train the base world model on the dataset (resumes from its last checkpoint).
pretrain steps="3000": (data)
    {{wc}} pretrain --data {{data}} --out {{base}} --steps {{steps}} --checkpoint-every 250

# Where the Matrix-Game base lives (`just pretrain-matrix-game`; pipelines/matrix-game.toml reads it).
# Not committed: the device machines' copy of the tree must stay under 64 MiB, and the
# pre-training is deterministic (the same bytes on a rerun, about 25 minutes on 2 cores).
mg_base := "file://" + justfile_directory() + "/models/matrix-game"

# Pre-train the Matrix-Game 2.0 architecture at the embedded size on the dataset (resumes; done when it has `steps`).
pretrain-matrix-game steps="1500": (data)
    {{wc}} pretrain --arch matrix-game --data {{data}} --out {{mg_base}} --steps {{steps}} --checkpoint-every 250

# Post-train the Matrix-Game base on the embedded world (the five stages, as `just train`), pre-training it first if needed.
train-matrix-game iters="" run=("file://" + justfile_directory() + "/runs/matrix-game"): pretrain-matrix-game
    {{wc}} train --run {{run}} --pipeline pipelines/matrix-game.toml {{ if iters == "" { "" } else { "--iters " + iters } }}

# Action accuracy of the base model on held-out prompts (re-render probe).
eval-base sequences="16":
    {{wc}} eval --data {{data}} --model {{base}} --sequences {{sequences}}

# Action accuracy of checkpoint K of a training run on the same held-out prompts.
eval-run checkpoint sequences="16" run=run:
    {{wc}} eval --data {{data}} --model {{base}} --model {{run}}@{{checkpoint}} --sequences {{sequences}}

# Table 1 of the base model and checkpoint K of a run, by length (short, medium, long), written to runs/eval/.
eval-table checkpoint sequences="16" run=run:
    {{wc}} eval --data {{data}} --model {{base}} --model {{run}}@{{checkpoint}} --sequences {{sequences}} --out file://{{justfile_directory()}}/runs/eval

# The paper's ablations beside the default run (Table 2: sample-level rollout, IF-only, VQ-only; Table 3: no-best-of-n, all-timesteps; configs in pipelines/ablations/), each trained ITERS iterations (resuming), then all evaluated on the same held-out prompts in one table.
ablations iters="24" sequences="16" only="sample-level if-only vq-only":
    {{wc}} train --run {{run}} --pipeline {{pipeline}} --iters {{iters}}
    for a in {{only}}; do {{wc}} train --run file://{{justfile_directory()}}/runs/ablations/$a --pipeline pipelines/ablations/$a.toml --iters {{iters}}; done
    models="--model {{base}} --model {{run}}@{{iters}}"; for a in {{only}}; do models="$models --model file://{{justfile_directory()}}/runs/ablations/$a@{{iters}}"; done; \
    {{wc}} eval --data {{data}} $models --sequences {{sequences}} --out file://{{justfile_directory()}}/runs/eval

# Replicates of one pipeline: train it once per seed (runs/seeds/<pipeline name>-<seed>, resuming), then evaluate every checkpoint ITERS against the base on the same held-out prompts (with GUIDANCE: 2.5 for pipelines/ablations/guided-policy.toml), with the mean gain over the seeds and its standard error.
seeds seeds="20261128 20261129 20261130 20261131" iters="24" sequences="128" pipeline=pipeline guidance="1":
    for s in {{seeds}}; do {{wc}} train --run file://{{justfile_directory()}}/runs/seeds/{{file_stem(pipeline)}}-$s --pipeline {{pipeline}} --seed $s --iters {{iters}}; done
    models="--model {{base}}"; for s in {{seeds}}; do models="$models --model file://{{justfile_directory()}}/runs/seeds/{{file_stem(pipeline)}}-$s@{{iters}}"; done; \
    {{wc}} eval --data {{data}} $models --sequences {{sequences}} --guidance {{guidance}} --replicates --out file://{{justfile_directory()}}/runs/eval

# Where the pose estimator (the interaction-following reward's instrument) lives.
pose := "file://" + justfile_directory() + "/models/pose"
pose_stage1 := "file://" + justfile_directory() + "/runs/pose-stage1"
pose_stage2 := "file://" + justfile_directory() + "/runs/pose-stage2"
pose_stage3 := "file://" + justfile_directory() + "/runs/pose-stage3"

# Train the pose estimator on fresh simulator renders, in four stages (about
# 50 min each on 2 cores): STEPS from scratch with the coarse half-window
# volumes (runs/pose-stage1), STEPS more warm-started from it at half the
# learning rate on new windows (runs/pose-stage2), STEPS more with the fine
# half-window volumes (--fine-halves, the default), warm-started from that on
# new windows (runs/pose-stage3), then 2500 more at lr 3e-4 on new windows
# (models/pose, which holds the shipped result: that stage resumes from it).
# Every stage resumes.
pose steps="3000":
    {{wc}} scorers train-pose --out {{pose_stage1}} --steps {{steps}} --checkpoint-every 250 --fine-halves false
    {{wc}} scorers train-pose --out {{pose_stage2}} --init-from {{pose_stage1}} --steps {{steps}} --lr 5e-4 --seed 1 --checkpoint-every 250 --fine-halves false
    {{wc}} scorers train-pose --out {{pose_stage3}} --init-from {{pose_stage2}} --steps {{steps}} --lr 1e-3 --seed 2 --checkpoint-every 250
    {{wc}} scorers train-pose --out {{pose}} --init-from {{pose_stage3}} --steps 2500 --lr 3e-4 --seed 4 --checkpoint-every 250

# Validate the built-in scorers on held-out scenes.
eval-scorers windows="2000":
    {{wc}} scorers eval-pose --model {{pose}} --windows {{windows}}
    {{wc}} scorers eval-vq

# Summary table and reward-curve charts of a run (Polars).
report run=run out="runs/report":
    {{wc}} report --run {{run}} --out {{out}}

# What an iteration costs, as ratios measured in one run (installs PyTorch, ~1 GB, on first use). Writes runs/bench/bench-<time>.parquet.
bench *args: venv
    python3 -c "import torch, safetensors" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check torch safetensors
    command -v moto_server >/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
    {{wc}} bench all {{args}}

# Submit iterations 0..ITERS to Slurm as job-array chains (SHARDS tasks per sharded stage); `just status RUN` follows them.
slurm-submit run iters shards pipeline=pipeline:
    cargo build --quiet --bin worldcompass
    WORLDCOMPASS_BIN="${WORLDCOMPASS_BIN:-{{justfile_directory()}}/target/debug/worldcompass}" pipelines/slurm/submit.sh {{run}} {{iters}} {{shards}} {{pipeline}}

# Run iterations 0..ITERS on Kubernetes, one Indexed Job per stage (the run must be initialised).
k8s-run name run iters shards image="worldcompass:latest":
    pipelines/k8s/run.sh {{name}} {{run}} {{iters}} {{shards}} {{image}}

# Submit iterations 0..ITERS to AWS Batch as array jobs (the run must be initialised, the job definition registered).
batch-submit run iters shards queue:
    pipelines/aws-batch/submit.sh {{run}} {{iters}} {{shards}} {{queue}}

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

# Capacity plans of Matrix-Game 2.0 at full size (pipelines/matrix-game-2.toml) on 1 and 8 H200s (989 TFLOP/s dense bf16).
plan-matrix-game-2:
    for g in 1 8; do {{wc}} plan --pipeline pipelines/matrix-game-2.toml --shards $g --gpus $g --peak-tflops 989 --params-b 1.62 --layers 30 --hidden 1536 --latent 44x80x16 --context-clips 1 --out pipelines/matrix-game-2-plan-${g}xH200.md; done

# Capacity plan of one iteration in the paper's setting (8B model, 64 GPUs); rewrites pipelines/capacity-plan.md.
plan *args:
    {{wc}} plan --pipeline pipelines/paper.toml --out pipelines/capacity-plan.md {{args}}

# Build worldcompass for NVIDIA GPUs here, with no GPU or CUDA toolkit (CUDA 13.0 compiler wheels into .cache/, link stubs; CAP 90 = H100/H200): target/cuda/worldcompass-cuda.
build-cuda cap="90": venv
    pipelines/gpu/build-cuda.sh {{cap}}

# On a GPU machine: CPU and cuda:0 agree, then two iterations of the embedded default on cuda:0 with each stage's time and GPU memory.
gpu-check bin="target/cuda/worldcompass-cuda":
    pipelines/gpu/gpu-check.sh {{bin}}

# On a GPU machine: Matrix-Game 2.0's full-size architecture (random weights in the released layouts, 176x176 frames) through one iteration of the five stages, each stage's time and GPU memory.
gpu-check-matrix-game-2 bin="target/cuda/worldcompass-cuda":
    pipelines/gpu/matrix-game-2-check.sh {{bin}}
