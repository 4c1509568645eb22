#!/usr/bin/env bash
# Submit WorldCompass iterations to Slurm as a chain of job arrays:
#
#   init -> [iter k: prefix[S] -> rollout[S] -> reward[S] -> select -> optimize] -> iter k+1 ...
#
# each job depending on the one before with afterok, every sharded stage an
# array of S tasks. Prints the job ids (one per line, "STAGE ITER JOBID").
#
#   pipelines/slurm/submit.sh RUN ITERS SHARDS [PIPELINE]
#
#   RUN       run URI every node can reach, e.g. s3://bucket/runs/exp1
#   ITERS     submit iterations FIRST..ITERS-1 (FIRST defaults to 0; committed
#             stages finish at once, so resubmitting a partly done run is safe)
#   SHARDS    array size of prefix, rollout and reward
#   PIPELINE  pipeline config for init (default pipelines/embedded.toml); it
#             must be readable from the compute nodes
#
# Environment: WORLDCOMPASS_BIN (default: worldcompass on PATH), FIRST,
# WC_SLURM_LOGS (default ./slurm-logs), WC_SBATCH_ARGS (extra sbatch
# arguments, e.g. "--partition=gpu --gres=gpu:1"), and the usual AWS_* for
# s3:// runs, which sbatch exports to the jobs.
set -euo pipefail

run="${1:?usage: submit.sh RUN ITERS SHARDS [PIPELINE]}"
iters="${2:?usage: submit.sh RUN ITERS SHARDS [PIPELINE]}"
shards="${3:?usage: submit.sh RUN ITERS SHARDS [PIPELINE]}"
pipeline="$(realpath "${4:-pipelines/embedded.toml}")"
first="${FIRST:-0}"
here="$(cd "$(dirname "$0")" && pwd)"
logs="$(realpath -m "${WC_SLURM_LOGS:-slurm-logs}")"
mkdir -p "${logs}"
[[ "${shards}" =~ ^[1-9][0-9]*$ ]] || { echo "SHARDS must be a positive integer, got '${shards}'" >&2; exit 2; }
[[ "${iters}" =~ ^[0-9]+$ ]] || { echo "ITERS must be a non-negative integer, got '${iters}'" >&2; exit 2; }
read -r -a extra <<< "${WC_SBATCH_ARGS:-}"

export WORLDCOMPASS_RUN="${run}" WORLDCOMPASS_PIPELINE="${pipeline}"
if [[ -n "${WORLDCOMPASS_BIN:-}" ]]; then export WORLDCOMPASS_BIN; fi

# submit STAGE ITER ARRAY_SIZE DEPENDENCY -> job id
submit() {
    local stage="$1" iter="$2" size="$3" dep="$4" args=()
    args+=(--parsable --export=ALL --job-name="wc-${iter}-${stage}")
    if [[ "${size}" -gt 0 ]]; then
        args+=(--array="0-$((size - 1))" --output="${logs}/wc-${iter}-${stage}-%A_%a.out")
    else
        args+=(--output="${logs}/wc-${iter}-${stage}-%j.out")
    fi
    if [[ -n "${dep}" ]]; then args+=(--dependency="afterok:${dep}" --kill-on-invalid-dep=yes); fi
    local id
    id="$(sbatch "${args[@]}" "${extra[@]}" "${here}/stage.sbatch" "${stage}" "${iter}")"
    id="${id%%;*}"
    echo "${stage} ${iter} ${id}"
    last="${id}"
}

last=""
submit init 0 0 ""
for ((k = first; k < iters; k++)); do
    for stage in prefix rollout reward; do
        submit "${stage}" "${k}" "${shards}" "${last}"
    done
    submit select "${k}" 0 "${last}"
    submit optimize "${k}" 0 "${last}"
done
