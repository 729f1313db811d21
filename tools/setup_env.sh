#!/usr/bin/env bash
# Create .venv and install the project with its test extra (idempotent). With --oracle, also
# create .mxnet-venv holding the real MXNet 1.9.1, the oracle of the compatibility tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Some machines list a CPU-only torch wheel in PIP_FIND_LINKS that torchvision cannot load with;
# install torch and torchvision from the package index only.
export PIP_FIND_LINKS=
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import toolkit, torch, torchvision, click, pandas, matplotlib, tqdm, pytest" 2>/dev/null; then
    echo "setting up .venv (torch, torchvision, DALI, ...; a few minutes the first time)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[test]"
fi
if [ "${1:-}" = "--oracle" ] && ! .mxnet-venv/bin/python -c "import mxnet" 2>/dev/null; then
    echo "setting up .mxnet-venv (MXNet 1.9.1, the compatibility oracle)"
    "$PY" -m venv .mxnet-venv
    .mxnet-venv/bin/pip install -q mxnet==1.9.1 numpy==1.23.5 opencv-python-headless==4.8.1.78
fi
