#!/usr/bin/env bash
# Print the Indexed Job of one stage: render.sh NAME RUN STAGE ITER SHARDS [IMAGE]
#   NAME    short run name for job names (lowercase letters, digits, '-')
#   RUN     run URI, e.g. s3://bucket/runs/exp1
#   STAGE   prefix|rollout|reward (sharded) or select|optimize (SHARDS is then 1)
#   IMAGE   container image with `worldcompass` on PATH (default: $WC_IMAGE or worldcompass:latest)
set -euo pipefail
name="${1:?usage: render.sh NAME RUN STAGE ITER SHARDS [IMAGE]}" run="${2:?}" stage="${3:?}" iter="${4:?}" shards="${5:?}"
image="${6:-${WC_IMAGE:-worldcompass:latest}}"
case "${stage}" in
    prefix | rollout | reward) ;;
    select | optimize) shards=1 ;;
    *) echo "unknown stage '${stage}'" >&2; exit 2 ;;
esac
[[ "${name}" =~ ^[a-z0-9-]+$ ]] || { echo "NAME must be lowercase letters, digits and '-': '${name}'" >&2; exit 2; }
sed -e "s|@NAME@|${name}|g" -e "s|@RUN@|${run}|g" -e "s|@STAGE@|${stage}|g" -e "s|@ITER@|${iter}|g" \
    -e "s|@SHARDS@|${shards}|g" -e "s|@IMAGE@|${image}|g" "$(dirname "$0")/stage-job.yaml"
