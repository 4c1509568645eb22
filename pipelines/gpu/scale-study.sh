#!/usr/bin/env bash
# The scale study (issue 27): does the embedded post-training gain grow with
# the model's size and the samples per step? In one call, on one GPU with no
# network and only the carried binary:
#
#   1. check: the CPU and the device agree on the tiny model (f32, and the
#      bf16 sampler where the device has one: the study samples in bf16 only
#      if that row passes);
#   2. data: the embedded dataset (held-out prompts and sequences, 128 of
#      each kind; ground-truth pre-training clips);
#   3. pretrain: the study's larger base on a time budget (`pretrain
#      --time-limit`, a checkpoint where it stops);
#   4. post-train: pipelines/gpu/scale-study.toml (32 groups x 16
#      candidates) from that base, two run seeds side by side, each cut at
#      the RL budget; both are then evaluated at the last checkpoint that
#      both reached;
#   5. evaluate: base and both seeds on the held-out prompts, the paper's
#      Table 1 protocol, with the mean gain over the seeds and its standard
#      error (`eval --replicates`), first on 16 sequences per kind (the
#      result if time runs out), then on 128 with the rest of the budget.
#
# Usage: pipelines/gpu/scale-study.sh [BIN]
#   WC_STUDY_SIZE    full (default) or tiny (every size small: a dry run of
#                    the whole flow on the CPU in about a minute; the test
#                    `scale_study::the_scale_study_runs_end_to_end_at_tiny_size`)
#   WC_STUDY_DEVICE  cuda:0 (default) or cpu
#   WC_STUDY_BUDGET  seconds for steps 2-5 (default 450; tiny: no limit)
#   WC_STUDY_WORK    scratch folder for the stores (default /tmp/scale-study)
#   OUT              where the results go (default runs/scale-study/out):
#                    scale-study.log, summary.tsv, eval-16.parquet,
#                    eval-128.parquet and study.tar.gz (the reward logs,
#                    pre-training metrics, settings and configs; no weights)
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
bin=${1:-target/cuda/worldcompass-cuda}
[[ $bin = /* ]] || bin="$repo/$bin"
size=${WC_STUDY_SIZE:-full}
device=${WC_STUDY_DEVICE:-cuda:0}
work=${WC_STUDY_WORK:-/tmp/scale-study}
out=${OUT:-runs/scale-study/out}
mkdir -p "$out" "$work"
out=$(cd "$out" && pwd)
exec > >(tee "$out/scale-study.log") 2>&1
summary="$out/summary.tsv"
printf 'key\tvalue\n' > "$summary"
note() { printf '%s\t%s\n' "$1" "$2" >> "$summary"; echo "scale-study: $1 = $2"; }
die() { echo "scale-study: $*" >&2; exit 1; }

case "$size" in
  full)
    budget=${WC_STUDY_BUDGET:-450}
    data_args=(--prompts 64 --sequences 128 --clips 4 --windows-per-clip 1 --pretrain-clips 6000 --pretrain-windows 3 --size 32 --seed 1)
    model_args=(--d-model 384 --layers 8 --heads 6 --mlp-ratio 4 --patch 8 --context-frames 2)
    pretrain_args=(--batch 64 --lr 1e-3 --warmup 200 --checkpoint-every 500 --steps 1000000)
    pipeline_edit=()
    eval_sequences=(16 128)
    eval_args=()
    ;;
  tiny)
    budget=${WC_STUDY_BUDGET:-100000}
    data_args=(--prompts 4 --sequences 4 --clips 4 --windows-per-clip 1 --pretrain-clips 16 --pretrain-windows 2 --size 32 --seed 1)
    model_args=(--d-model 192 --layers 1 --heads 2 --mlp-ratio 1 --patch 8 --context-frames 2)
    pretrain_args=(--batch 4 --lr 1e-3 --warmup 2 --checkpoint-every 2 --steps 6)
    pipeline_edit=(-e 's/^prompts = 64 /prompts = 4 /' -e 's/^groups = 32 /groups = 2 /' -e 's/^candidates = 16 /candidates = 8 /'
      -e 's/^iterations = 12 /iterations = 2 /' -e 's/^sampler_steps = 10 /sampler_steps = 2 /' -e 's/^minibatch = 192 /minibatch = 8 /')
    eval_sequences=(2 4)
    eval_args=(--sampler-steps 2)
    ;;
  *) die "WC_STUDY_SIZE must be full or tiny, not $size" ;;
esac
seeds=(20261201 20261202)

# On a GPU machine: the CUDA 13 libraries the binary needs.
if [ "$device" != cpu ]; then
  . pipelines/gpu/cuda-libs.sh
  cuda_libraries "$bin" || die "no study without them"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
wc() { "$bin" "$@"; }
echo "scale-study: $(date -u +%FT%TZ), size $size, device $device, budget ${budget} s, work $work"
note size "$size"
note device "$device"

# 1. The device agrees with the CPU; bf16 sampling only where its row passed.
dtype=f32
if [ "$device" != cpu ]; then
  if wc bench devices --device "$device" --preset tiny | tee "$work/devices.txt"; then
    dtype=bf16
  elif grep -q "OUTSIDE THE TOLERANCE" "$work/devices.txt" && ! grep "OUTSIDE THE TOLERANCE" "$work/devices.txt" | grep -vq bf16; then
    echo "scale-study: only the bf16 row is outside its tolerance; the study samples in f32"
  else
    die "the device does not agree with the CPU in f32, or the check failed (above): no study on it"
  fi
fi
note rollout_dtype "$dtype"

t0=$SECONDS
left() { echo $(( budget - (SECONDS - t0) )); }
phase_start=$SECONDS
phase_done() { note "$1_s" "$(( SECONDS - phase_start ))"; phase_start=$SECONDS; }

# 2. The dataset.
rm -rf "$work/data" "$work/base" "$work/runs" "$work/eval"
wc data --out "file://$work/data" "${data_args[@]}" || die "data failed"
phase_done data

# 3. The base, on 35% of what is left.
pre_budget=$(( $(left) * 35 / 100 ))
limit=()
[ "$size" = full ] && limit=(--time-limit "$pre_budget")
wc pretrain --data "file://$work/data" --out "file://$work/base" "${model_args[@]}" "${pretrain_args[@]}" "${limit[@]}" --device "$device" | tail -n 3 \
  || die "pretrain failed"
base_step=$(ls "$work/base/pretrain" | sed -n 's/^step-0*\([0-9][0-9]*\)$/\1/p' | sort -n | tail -n 1)
[ -n "$base_step" ] || die "pretrain committed no checkpoint"
note pretrain_steps "$base_step"
phase_done pretrain

# 4. Two seeds of the post-training side by side, on 55% of what is left
# (the evaluation gets the rest).
pipeline="$work/scale-study.toml"
sed -e "s|^base = \"runs/scale-study/base\"|base = \"file://$work/base\"|" "${pipeline_edit[@]}" pipelines/gpu/scale-study.toml > "$pipeline"
[ "$dtype" = bf16 ] && sed -i 's/^\[run\]$/[run]\ndtype = "bf16"/' "$pipeline"
grep -q "^base = \"file://$work/base\"" "$pipeline" || die "could not set the base in $pipeline"
iterations=$(sed -n 's/^iterations = \([0-9]*\).*/\1/p' "$pipeline")
rl_budget=$(( $(left) * 55 / 100 ))
pids=()
for s in "${seeds[@]}"; do
  timeout "$rl_budget" "$bin" train --run "file://$work/runs/seed-$s" --pipeline "$pipeline" --seed "$s" --device "$device" > "$work/train-$s.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  note "train_exit_seed_${seeds[$i]}" "$rc"
  case $rc in
    0) ;;
    124) echo "scale-study: seed ${seeds[$i]} reached the time limit; it is evaluated where both seeds got" ;;
    *) echo "scale-study: seed ${seeds[$i]} FAILED (exit $rc; its log follows)"; cat "$work/train-${seeds[$i]}.log" ;;
  esac
done
for s in "${seeds[@]}"; do tail -n 4 "$work/train-$s.log"; done
# The last checkpoint both seeds committed (checkpoint k+1 is committed
# with iteration k's optimize stage).
reached=$iterations
for s in "${seeds[@]}"; do
  k=0
  for m in "$work/runs/seed-$s"/iters/*/optimize/_manifest.json; do
    [ -e "$m" ] || continue
    i=$(basename "$(dirname "$(dirname "$m")")"); i=$((10#$i + 1))
    [ "$i" -gt "$k" ] && k=$i
  done
  note "checkpoint_reached_seed_$s" "$k"
  [ "$k" -lt "$reached" ] && reached=$k
done
note iterations_configured "$iterations"
note iterations_evaluated "$reached"
phase_done post_training

# 5. Table 1: base and both seeds at checkpoint $reached, 16 then 128 sequences per kind.
models=(--model "file://$work/base")
if [ "$reached" -gt 0 ]; then
  for s in "${seeds[@]}"; do models+=(--model "file://$work/runs/seed-$s@$reached"); done
else
  echo "scale-study: no iteration finished within the budget; only the base is evaluated"
fi
for n in "${eval_sequences[@]}"; do
  # The first (smallest) evaluation always runs: it is the result if time
  # runs out. The larger one gets what is left of the budget (at least a
  # minute); cut off, it leaves the first.
  limit=()
  if [ "$n" != "${eval_sequences[0]}" ]; then
    remaining=$(left)
    limit=(timeout "$(( remaining > 60 ? remaining : 60 ))")
  fi
  started=$SECONDS
  if "${limit[@]}" "$bin" eval --data "file://$work/data" "${models[@]}" --sequences "$n" --replicates "${eval_args[@]}" --device "$device" --out "file://$work/eval/$n"; then
    cp "$work/eval/$n"/eval/eval-*.parquet "$out/eval-$n.parquet"
    note "eval_${n}_s" "$(( SECONDS - started ))"
  else
    rc=$?
    [ ${#limit[@]} -gt 0 ] || die "eval of $n sequences failed"
    note "eval_${n}_stopped_exit" "$rc"
  fi
done
phase_done eval

# What comes back: the reward logs, pre-training metrics, settings and configs (no weights).
(
  cd "$work"
  find runs base -name '*.parquet' -o -name '*.json' -o -name '*.toml' | grep -v '/checkpoints/' > files.txt
  ls train-*.log devices.txt scale-study.toml 2>/dev/null >> files.txt
  tar -czf "$out/study.tar.gz" -T files.txt
)
note total_s "$(( SECONDS - t0 ))"
echo "scale-study: done; results in $out"
