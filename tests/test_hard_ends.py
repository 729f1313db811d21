"""How runs end when something outside them ends hard (issue 22 item 6): a terminal closed under
torchrun (SIGHUP, then every write to the terminal fails with EIO), a DALI source worker or the
training process killed with SIGKILL; and an error on a rank other than 0 (item 7)."""
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from toolkit.toy import ensure_toy_dataset

pytestmark = pytest.mark.slow

TINY = ["--recipe", "resnet20", "--image-size", "32", "--batch-size", "8", "--workers", "1", "--log-every", "1",
        "--seed", "3"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 classes x 24 images: 192 train, 48 val."""
    return ensure_toy_dataset(str(tmp_path_factory.mktemp("toy")), images_per_class=24, quiet=True)


def dirs(root, name):
    return ["--logs-dir", str(root / "logs"), "--checkpoints-dir", str(root / "ck"), "--prefix", name]


def wait_for(path, pattern, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and re.search(pattern, open(path).read())):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {pattern!r} in {path}"
        time.sleep(0.05)


def status(root, name):
    return json.loads((root / "logs" / f"{name}.status.json").read_text())


def test_a_closed_terminal_under_torchrun_still_writes_the_stop_checkpoint(data, tmp_path):
    """The terminal goes (its master side closed: every write to it fails with EIO) and torchrun
    gets SIGHUP, which it passes to each rank: the ranks' stop message to the dead terminal killed
    rank 1 (OSError EIO in the handler), and no checkpoint was written."""
    master, slave = pty.openpty()
    cmd = TORCHRUN + ["--nproc_per_node=2", "tools/train.py", *TINY, "--data", data, *dirs(tmp_path, "h"),
                      "--epochs", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        wait_for(str(tmp_path / "logs" / "h.log"), r"Epoch\[0\] Batch \[1-2\]", proc)
        os.close(master)
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "logs" / "h.log").read_text()
    assert "Stopped at Epoch[0] Batch [" in log, log[-2000:]
    assert len(list((tmp_path / "ck").glob("h-0000-b*.pt"))) == 1
    assert status(tmp_path, "h")["status"] == "stopped"
