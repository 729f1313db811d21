"""Test fixtures: the MXNet 1.9.1 files (tests/data/mxnet191) and the oracle interpreter."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "mxnet191"
MXNET_PYTHON = os.environ.get("MXNET_PYTHON", str(REPO / ".mxnet-venv" / "bin" / "python"))


@pytest.fixture(scope="session")
def mxnet191() -> pathlib.Path:
    """Files written by the real MXNet 1.9.1, kept in the repository (made by their make.py)."""
    assert FIXTURES.is_dir(), f"fixtures not found at {FIXTURES}: restore tests/data/ from git"
    return FIXTURES


@pytest.fixture(scope="session")
def mxnet_python() -> str:
    """The oracle interpreter; a missing oracle fails the test loudly, never skips it."""
    ok = os.path.exists(MXNET_PYTHON) and subprocess.run(
        [MXNET_PYTHON, "-c", "import mxnet"], capture_output=True).returncode == 0
    assert ok, (f"MXNet 1.9.1 oracle not importable at {MXNET_PYTHON}; "
                "create it with: bash tools/setup_env.sh --oracle")
    return MXNET_PYTHON
