#!/usr/bin/env bash
# Submit WorldCompass iterations to AWS Batch: per iteration an array job for
# each sharded stage (prefix, rollout, reward) and a single job for select
# and optimize, each depending on the one before.
#
#   pipelines/aws-batch/submit.sh RUN ITERS SHARDS JOB_QUEUE
#
# Register the job definition once:
#   aws batch register-job-definition --cli-input-json file://pipelines/aws-batch/job-definition.json
# AWS Batch sets AWS_BATCH_JOB_ARRAY_INDEX in each child; the array size
# reaches `worldcompass stage` as AWS_BATCH_JOB_ARRAY_SIZE, set here.
# The run must be initialised first (`worldcompass init`). With
# WC_DRY_RUN=1 the submit-job requests are printed (one JSON per line, with
# "dependsOnStep" naming the earlier request) instead of sent.
set -euo pipefail
run="${1:?usage: submit.sh RUN ITERS SHARDS JOB_QUEUE}" iters="${2:?}" shards="${3:?}" queue="${4:?}"
definition="${WC_JOB_DEFINITION:-worldcompass-stage}"
[[ "${shards}" =~ ^[1-9][0-9]*$ ]] || { echo "SHARDS must be a positive integer, got '${shards}'" >&2; exit 2; }

last="" step=0
for ((k = ${FIRST:-0}; k < iters; k++)); do
    for stage in prefix rollout reward select optimize; do
        case "${stage}" in prefix | rollout | reward) size="${shards}" ;; *) size=1 ;; esac
        array="" depends="[]"
        # A single-child array would not be allowed (size >= 2): run it plain.
        if [[ "${size}" -gt 1 ]]; then array="\"arrayProperties\": {\"size\": ${size}},"; fi
        if [[ -n "${last}" ]]; then depends="[{\"jobId\": \"${last}\"}]"; fi
        request="{\"jobName\": \"wc-${k}-${stage}\", \"jobQueue\": \"${queue}\", \"jobDefinition\": \"${definition}\", ${array}
 \"dependsOn\": ${depends}, \"parameters\": {\"stage\": \"${stage}\", \"iter\": \"${k}\", \"run\": \"${run}\"},
 \"containerOverrides\": {\"environment\": [{\"name\": \"AWS_BATCH_JOB_ARRAY_SIZE\", \"value\": \"${size}\"}]}}"
        if [[ "${WC_DRY_RUN:-0}" == 1 ]]; then
            echo "${request}" | tr -d '\n' | sed "s|\"jobId\": \"${last}\"|\"dependsOnStep\": ${last:-null}|"; echo
            last="${step}"
        else
            last="$(aws batch submit-job --cli-input-json "${request}" --query jobId --output text)"
            echo "${stage} ${k} ${last}"
        fi
        step=$((step + 1))
    done
done
