#!/usr/bin/env bash
# Run WorldCompass iterations on Kubernetes, one Indexed Job per stage, each
# started when the one before has completed:
#
#   pipelines/k8s/run.sh NAME RUN ITERS SHARDS [IMAGE]
#
# The run must be initialised first (`worldcompass init --run RUN --pipeline ...`
# from any machine that reaches the store). Iterations 0..ITERS-1 are run;
# stages already committed finish at once, so rerunning after a failure resumes.
set -euo pipefail
name="${1:?usage: run.sh NAME RUN ITERS SHARDS [IMAGE]}" run="${2:?}" iters="${3:?}" shards="${4:?}" image="${5:-}"
here="$(cd "$(dirname "$0")" && pwd)"
for ((k = ${FIRST:-0}; k < iters; k++)); do
    for stage in prefix rollout reward select optimize; do
        job="wc-${name}-${k}-${stage}"
        kubectl delete job "${job}" --ignore-not-found >/dev/null
        "${here}/render.sh" "${name}" "${run}" "${stage}" "${k}" "${shards}" ${image:+"${image}"} | kubectl apply -f -
        kubectl wait --for=condition=complete --timeout="${WC_STAGE_TIMEOUT:-24h}" "job/${job}"
    done
done
