#!/usr/bin/env bash
# Every GPU path of the project checked once, from a fresh clone on a machine with a GPU and nothing
# installed (about 8 minutes after the set-up on one H100/H200-class GPU):
#   bash tools/gpu_check.sh                  set up .venv from requirements-lock.txt (timed), then run
#                                            tools/benchmark.py gpu: one line per check, JSON last
#   bash tools/gpu_check.sh --cpu            the same checks on the CPU with tiny sizes (the tests run it)
#   bash tools/gpu_check.sh --only loader    one check; see: tools/benchmark.py gpu --help
# --latest: the newest versions setup.py allows (.venv-latest), as tools/quickstart.sh --latest.
# Any other option goes to tools/benchmark.py gpu (--budget, --limit CHECK=S, --set KEY=VALUE, --json-out).
# The summary is also written to logs/gpu_check.json after every check; each check's output is in
# bench-data/gpu-check/logs/CHECK.log.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv SETUP=() ARGS=()
for arg in "$@"; do
    case "$arg" in
        --latest) VENV=.venv-latest SETUP=(--latest) ARGS+=(--latest) ;;
        *) ARGS+=("$arg") ;;
    esac
done
JSON=logs/gpu_check.json
for ((i = 0; i < ${#ARGS[@]}; i++)); do   # where the summary goes, for a failed set-up
    case "${ARGS[$i]}" in
        --json-out) JSON=${ARGS[$((i + 1))]:-$JSON} ;;
        --json-out=*) JSON=${ARGS[$i]#--json-out=} ;;
    esac
done

start=$SECONDS
echo "[gpu-check] set-up: bash tools/setup_env.sh ${SETUP[*]:-}"
if ! bash tools/setup_env.sh ${SETUP[@]+"${SETUP[@]}"}; then
    mkdir -p "$(dirname "$JSON")"
    printf '{"setup_seconds": %d, "setup": "FAIL", "checks": {}, "passed": [], "failed": ["setup"], "complete": false, "ok": false}\n' \
        $((SECONDS - start)) | tee "$JSON"
    echo "[gpu-check] set-up FAILED after $((SECONDS - start)) s (tools/setup_env.sh; output above)" >&2
    exit 1
fi
SETUP_SECONDS=$((SECONDS - start))
echo "[gpu-check] set-up took $SETUP_SECONDS s"
exec "$VENV/bin/python" tools/benchmark.py gpu --setup-seconds "$SETUP_SECONDS" ${ARGS[@]+"${ARGS[@]}"}
