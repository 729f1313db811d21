#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, the MXNet-oracle and end-to-end tests included.
#   bash tools/test.sh [PYTEST ARGS]            on .venv, the versions of requirements-lock.txt
#   bash tools/test.sh --latest [PYTEST ARGS]   on .venv-latest, the newest versions setup.py allows
set -euo pipefail
cd "$(dirname "$0")/.."
# VENV (as tools/setup_env.sh reads it): the folder set up and then tested, the same one
if [ "${1:-}" = "--latest" ]; then
    shift
    export VENV=${VENV:-.venv-latest}
    bash tools/setup_env.sh --latest --oracle
else
    export VENV=${VENV:-.venv}
    bash tools/setup_env.sh --oracle
fi
# three test processes (pytest-xdist): many tests wait on subprocesses, torchrun and timeouts, so even
# 2 cores keep three busy (about half the wall time of one); TEST_PROCESSES=0 runs them in this process
exec "$VENV/bin/python" -m pytest -n "${TEST_PROCESSES:-3}" "$@"
