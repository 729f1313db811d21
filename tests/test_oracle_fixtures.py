"""The committed MXNet 1.9.1 files (tests/data/mxnet191) are what the oracle writes: their make.py,
run into a temporary folder with .mxnet-venv, reproduces every one of them byte for byte, bar the
logs' wall-clock figures (Speedometer's samples/sec and the epochs' time cost)."""
import os
import re
import subprocess

import pytest

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

INPUTS = {"make.py", "gen_recordio.py", "gen_log.py", "gen_models.py"}  # read by make.py, never written
CLOCK = re.compile(rb"(?<=Speed: )[0-9.]+(?= samples/sec)|(?<=Time cost=)[0-9.]+")


def _made_files(root):
    """Relative paths of the files make.py writes under root (its inputs and imgs/ left out)."""
    found = set()
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("imgs", "__pycache__")]
        found |= {os.path.relpath(os.path.join(d, f), root) for f in files}
    return found - INPUTS


def test_make_py_reproduces_the_committed_fixtures(mxnet191, mxnet_python, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([mxnet_python, str(mxnet191 / "make.py"), str(out)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    committed = _made_files(mxnet191)
    assert len(committed) == 22 + 100 and _made_files(out) == committed
    for rel in sorted(committed):
        ours, theirs = (mxnet191 / rel).read_bytes(), (out / rel).read_bytes()
        if rel.startswith("logs" + os.sep):
            assert len(CLOCK.findall(ours)) == len(CLOCK.findall(theirs)) > 0, rel
            ours, theirs = CLOCK.sub(b"#", ours), CLOCK.sub(b"#", theirs)
        assert ours == theirs, rel
