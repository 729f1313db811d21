#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, the MXNet-oracle and end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh --oracle
exec .venv/bin/python -m pytest "$@"
