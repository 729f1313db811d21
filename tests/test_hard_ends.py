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


def corrupt_in_rank1s_first_batch(data, tmp_path, batch_size=8, seed=3):
    """A copy of the toy set whose records in rank 1's first training batch (2 ranks) are not images."""
    import shutil
    from toolkit import recordio
    from toolkit.data.sampler import RankBatches
    out = tmp_path / "bad"
    shutil.copytree(data, out, ignore=shutil.ignore_patterns("images"))
    reader = recordio.IndexedRecordReader(str(out / "toy_train.idx"), str(out / "toy_train.rec"))
    records = [reader.read(i) for i in range(len(reader))]
    reader.close()
    batches = RankBatches(len(records), batch_size, 1, 2, True, seed)
    bad = {i for i, _, _ in batches.batch(0)}
    with recordio.IndexedRecordWriter(str(out / "toy_train.idx"), str(out / "toy_train.rec")) as w:
        for i, rec in enumerate(records):
            header, payload = recordio.unpack(rec)
            w.write_idx(int(reader.keys[i]), recordio.pack(header, b"not an image" if i in bad else payload))
    return str(out)


def test_an_error_on_rank_1_reaches_the_user_and_the_status_says_failed(data, tmp_path):
    """Undecodable records in rank 1's first batch (DALI stops on them): rank 1's line was never
    printed, rank 0 said "see the other ranks' messages above" over nothing, status stayed running."""
    bad = corrupt_in_rank1s_first_batch(data, tmp_path)
    cmd = TORCHRUN + ["--nproc_per_node=2", "tools/train.py", *TINY, "--loader", "dali", "--workers", "0",
                      "--data", bad, *dirs(tmp_path, "r"), "--epochs", "1", "--timeout", "30"]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    print(f"rank 1's error -> torchrun exited {proc.returncode} in {time.monotonic() - t:.1f} s")
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "Error: " in line]
    print("\n".join(errors))
    assert proc.returncode != 0 and errors, out
    assert any(re.search(r"Error: rank 1: .*toy_train\.rec key \d+ offset \d+: not an image", e) for e in errors), out
    assert "Traceback" not in "".join(errors)
    log = (tmp_path / "logs" / "r.log").read_text()  # rank 0's: the record has rank 1's line too
    assert re.search(r"Error: rank 0 stopped with rank 1, which failed: .*toy_train\.rec key \d+ offset \d+: not an "
                     "image", log), log[-1500:]
    final = status(tmp_path, "r")
    assert final["status"] == "failed", final
