#!/usr/bin/env bash
# Matrix-Game 2.0's full-size architecture through the five stages (#24), on
# a machine with an NVIDIA GPU and a `just build-cuda` worldcompass:
#
#   1. `model import --random-weights`: a base store in the released
#      layouts (the 1.62 B transformer with its action modules, the Wan2.1
#      VAE, the CLIP ViT-H/14 vision tower) with seeded random weights, at
#      square frames of $FRAME pixels (default 176: 22x22 latents; the
#      release runs 352x640, whose NFT step does not fit without flash
#      attention: `just gpu-check`, step 4);
#   2. one iteration of pipelines/matrix-game-2.toml made small enough for
#      a check (8 prompts, 2 groups of 16 candidates, 2 clips of one causal
#      block = 12 frames, the best and the worst candidate of each group
#      trained on in minibatches of 2; the probe instrument, as no pose
#      estimator reads these frames), each stage a process on the device:
#      its wall time and the GPU's peak memory while it ran.
#
# Usage: pipelines/gpu/matrix-game-2-check.sh [BIN]
#   (`just gpu-check-matrix-game-2`). Writes under $OUT (default
#   runs/matrix-game-2-check). WC_GPU_CHECK_DEVICE=cpu runs the same flow
#   on the CPU at the tiny-wan preset (the same layouts at 16x16; the full
#   size's f32 weights, old weights and optimizer state need about 30 GB),
#   or, with PRESET=matrix-game-2 (LAYERS=N keeps N of the 30 blocks,
#   FRAME the frame side), the released layouts at a size a CPU holds.
#   CANDIDATES sets G (16 on a GPU, 4 on the CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/cuda/worldcompass-cuda}
device=${WC_GPU_CHECK_DEVICE:-cuda:0}
frame=${FRAME:-176}
out=${OUT:-runs/matrix-game-2-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee "$out/matrix-game-2-check.log") 2>&1

gpu_mib() {
  if [ "$device" = cpu ]; then echo 0; else nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -n 1; fi
}
# Run a command, then print its wall time (and peak host memory where
# /usr/bin/time exists).
timed() {
  local what=$1
  shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "$what: %e s, peak host memory %M KiB" "$@"
  else
    local start=$SECONDS
    "$@"
    echo "$what: $((SECONDS - start)) s"
  fi
}
if [ "$device" != cpu ]; then
  . pipelines/gpu/cuda-libs.sh
  cuda_libraries "$bin" || exit 1
fi
echo "matrix-game-2-check: $(date -u +%FT%TZ) on $(hostname), device $device"

rm -rf "$out/base" "$out/run"
if [ "$device" = cpu ]; then
  preset=${PRESET:-tiny-wan} dtype=f32 candidates=${CANDIDATES:-4}
else
  preset=${PRESET:-matrix-game-2} dtype=bf16 candidates=${CANDIDATES:-16}
fi
if [ "$preset" = tiny-wan ]; then
  sizes=(--preset tiny-wan) windows=1
else
  sizes=(--preset "$preset" --frame-size "$frame" ${LAYERS:+--layers "$LAYERS"}) windows=3
fi
echo
echo "== 1. random weights in the released layouts ($preset) =="
timed import "$bin" model import "${sizes[@]}" --random-weights --out "$out/base"

echo
echo "== 2. one iteration of the five stages on $device =="
sed -e "s|^base = .*|base = \"$out/base\"|" \
    -e "s|^device = .*|device = \"$device\"|" \
    -e "s|^dtype = .*|dtype = \"$dtype\"|" \
    -e "s|^prompts = [0-9]*|prompts = 8|" \
    -e "s|^groups = [0-9]*|groups = 2|" \
    -e "s|^clips = [0-9]*|clips = 2|" \
    -e "s|^windows_per_clip = [0-9]*|windows_per_clip = $windows|" \
    -e "s|^candidates = [0-9]*|candidates = $candidates|" \
    -e "s|^minibatch = [0-9]*|minibatch = 2|" \
    -e "s|^keep_top = [0-9]*|keep_top = 1|" \
    -e "s|^keep_bottom = [0-9]*|keep_bottom = 1|" \
    -e "s|^if_instrument = .*|if_instrument = \"probe\"|" \
    -e "s|^pose_model = .*|pose_model = \"\"|" \
    pipelines/matrix-game-2.toml > "$out/pipeline.toml"
run="file://$out/run"
timed init "$bin" init --run "$run" --pipeline "$out/pipeline.toml"
printf '%-9s %8s %14s\n' stage wall_s peak_gpu_MiB
for stage in prefix rollout reward select optimize; do
  base_mib=$(gpu_mib)
  peak=$base_mib
  "$bin" stage "$stage" --run "$run" --iter 0 --device "$device" > "$out/$stage.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    m=$(gpu_mib)
    [ "$m" -gt "$peak" ] && peak=$m
    sleep 0.2
  done
  wait "$pid" || { cat "$out/$stage.log"; echo "matrix-game-2-check: stage $stage failed" >&2; exit 1; }
  printf '%-9s %8s %14s\n' "$stage" "$(grep -o 'wall_s=[0-9.]*' "$out/$stage.log" | tail -n 1 | cut -d= -f2)" "$((peak - base_mib))"
done
"$bin" status --run "$run" | tail -n 8
echo "matrix-game-2-check: passed"
