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
# (re)install whenever setup.py differs from the one last installed: a dependency added later
# reaches an existing .venv too
STAMP=$(sha1sum setup.py | cut -d' ' -f1)
if [ "$(cat .venv/.installed-setup 2>/dev/null)" != "$STAMP" ] || ! .venv/bin/python -c "import toolkit" 2>/dev/null; then
    echo "setting up .venv (torch, torchvision, DALI, ...; a few minutes the first time)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[test]"
    echo "$STAMP" > .venv/.installed-setup
fi
# MXNet 1.9.1 needs numpy 1.23, whose last wheels are for Python 3.11
MXPY=${MXNET_PYTHON:-$(command -v python3.11 || echo "$PY")}
if [ "${1:-}" = "--oracle" ] && ! .mxnet-venv/bin/python -c "import mxnet" 2>/dev/null; then
    echo "setting up .mxnet-venv (MXNet 1.9.1, the compatibility oracle)"
    "$MXPY" -m venv .mxnet-venv
    .mxnet-venv/bin/pip install -q mxnet==1.9.1 numpy==1.23.5 opencv-python-headless==4.8.1.78
fi
