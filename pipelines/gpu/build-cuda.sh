#!/usr/bin/env bash
# Build `worldcompass` with the `cuda` feature on a machine without a GPU or
# a system CUDA toolkit (a login node, a CI box, a laptop), for the GPUs of
# compute capability CAP (default 90: H100 and H200).
#
# Usage: pipelines/gpu/build-cuda.sh [CAP]     (`just build-cuda` runs it)
#
# 1. NVIDIA's CUDA 13.0 compiler wheels from the Python package index, into
#    a cache folder ($WC_CUDA_CACHE, default .cache/cuda-13.0), in ONE
#    `pip install --target` call (a second call skips folders that exist).
#    13.0, not newer: 13.4 emits PTX 9.4, which a CUDA 13.0 driver (580)
#    cannot load.
# 2. Link-time stubs of libcuda.so.1, libcublas.so.13, libcublasLt.so.13 and
#    libcurand.so.10, generated from the functions cudarc binds
#    (cuda-stubs.py); libcudart and libnvrtc are the wheels' own. The binary
#    records only the sonames: on the GPU machine the driver's libcuda and
#    its CUDA 13 libraries are bound instead (see the README, "GPU").
# 3. `cargo build --profile cuda --features cuda` (the release profile with
#    whole-program LTO, optimised for size: Cargo.toml says why) into target/cuda (its own
#    target folder: RUSTFLAGS differ from the CPU build's), then a stripped
#    copy at target/cuda/worldcompass-cuda, and that compressed
#    (worldcompass-cuda.xz, about a fifth of its size) for machines reached
#    through a size-limited copy: `xz -d` or Python's lzma unpacks it.
#
# Where a CUDA 13 toolkit is installed (nvcc on PATH, CUDA_HOME set), a
# plain `cargo build --release --features cuda` does the same without this.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
cap=${1:-90}
cache=${WC_CUDA_CACHE:-$repo/.cache/cuda-13.0}
python=${WC_PYTHON:-$repo/.venv/bin/python3}
started=$(date +%s)

if [ ! -x "$cache/wheels/nvidia/cu13/bin/nvcc" ]; then
  [ -x "$python" ] || python3 -m venv "$repo/.venv"
  echo "build-cuda: installing the CUDA 13.0 compiler wheels into $cache/wheels"
  rm -rf "$cache/wheels"
  "$python" -m pip install --quiet --disable-pip-version-check --target "$cache/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
fi
toolkit="$cache/wheels/nvidia/cu13"
"$toolkit/bin/nvcc" --version | tail -n 2

# cudarc's sources, as Cargo.lock pins them (fetched if needed).
cargo fetch --quiet
cudarc_version=$(awk '/^name = "cudarc"$/{getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
cudarc=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "cudarc-$cudarc_version" | head -n 1)
[ -n "$cudarc" ] || { echo "build-cuda: cudarc $cudarc_version is not in the cargo registry" >&2; exit 1; }

link="$cache/link"
"$python" pipelines/gpu/cuda-stubs.py "$cudarc" "$link"
ln -sf "$toolkit/lib/libcudart.so.13" "$link/libcudart.so"
ln -sf "$toolkit/lib/libnvrtc.so.13" "$link/libnvrtc.so"

export PATH="$toolkit/bin:$PATH"
export CUDA_HOME="$toolkit"
export CUDA_COMPUTE_CAP="$cap"
export CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="-L native=$link"
export CARGO_TARGET_DIR="$repo/target/cuda"
cargo build --profile cuda --features cuda --bin worldcompass

out="$CARGO_TARGET_DIR/worldcompass-cuda"
strip -o "$out" "$CARGO_TARGET_DIR/cuda/worldcompass"
size=$(stat -c %s "$out")
echo "build-cuda: $out ($((size / 1024 / 1024)) MiB stripped, compute capability $cap, $(( $(date +%s) - started )) s)"
echo "build-cuda: it needs at run time (the GPU machine's, on LD_LIBRARY_PATH):"
readelf -d "$out" | awk '/NEEDED/ {gsub(/[\[\]]/, "", $5); print "  " $5}' | grep -E 'cu|nvrtc'
xz -T0 -9 -k -f "$out"
echo "build-cuda: $out.xz ($(( $(stat -c %s "$out.xz") / 1024 / 1024 )) MiB, xz)"
