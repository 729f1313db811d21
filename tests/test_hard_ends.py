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
    """A copy of the toy set whose records in rank 1's first training batch (2 ranks) are not images
    (the same sizes: a copy, not a new packing)."""
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
            if i in bad:  # the same length: the packing record (sizes, counts) still holds
                payload = b"not an image".ljust(len(payload), b"\0")
            w.write_idx(int(reader.keys[i]), recordio.pack(header, payload))
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


def _session(sid):
    """Live processes of session `sid` (a run started with start_new_session: it, its fork server,
    loader workers, DALI's source workers, multiprocessing's resource tracker)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(pid))
    return found


def _start(data, root, name, loader, workers):
    cmd = [sys.executable, "tools/train.py", *TINY, "--loader", loader, "--workers", str(workers), "--data", data,
           *dirs(root, name), "--epochs", "2", "--timeout", "30"]
    out = open(root / f"{name}.out", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _children(pid):
    kids = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in cmdline and b"forkserver" not in cmdline:
            kids.append(int(p))
    return kids


def test_a_dali_source_worker_killed_ends_the_run_with_one_line_naming_it(data, tmp_path):
    """Was a hang without end (no batch, no message after 150 s with --timeout 30)."""
    proc = _start(data, tmp_path, "d", "dali", 4)  # one source worker (forked on the CPU)
    try:
        wait_for(str(tmp_path / "logs" / "d.log"), r"Epoch\[0\] Batch \[1-2\]", proc)
        worker, = _children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        t = time.monotonic()
        code = proc.wait(timeout=45)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"DALI source worker SIGKILLed -> exit {code} in {took:.1f} s")
    out = (tmp_path / "d.out").read_text()
    errors = [line for line in out.splitlines() if "Error" in line or "Traceback" in line]
    assert code == 1 and took < 30 and len(errors) == 1, out[-3000:]
    assert f"Error: DALI source worker (pid {worker}, killed by signal SIGKILL) died while reading split 'train'" \
        in errors[0]
    assert status(tmp_path, "d")["status"] == "failed"
    deadline = time.monotonic() + 10
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session(proc.pid), "processes left behind"


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_a_training_process_killed_leaves_no_process_behind(data, tmp_path, loader):
    """SIGKILL of the training process (the OOM killer; torchrun after --shutdown-timeout): its fork
    server, loader workers and resource tracker lived on for 24 minutes and more, holding /dev/shm
    (each worker held the fork server's liveness pipe; DataLoader's watchdog checks the fork server)."""
    proc = _start(data, tmp_path, "k", loader, 2)
    try:
        wait_for(str(tmp_path / "logs" / "k.log"), r"Epoch\[0\] Batch \[1-2\]", proc)
        before = _session(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _session(proc.pid)
        print(f"{loader}: {len(before)} processes; {len(left)} left after {15 - (deadline - time.monotonic()):.1f} s")
        assert len(before) >= 3 and not left, f"left behind: {left}"
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_heartbeat_after_the_end_never_turns_it_back_into_running(tmp_path):
    """The end of a launch can be written by errors.hard_exit from another thread or a signal handler
    while the heartbeat thread is due: a late beat made a failed run "running", then "lost"."""
    from toolkit.engine import status
    with status.heartbeat(str(tmp_path), "p", every=0.05):
        status.write_status(str(tmp_path), "p", "failed", code=1)  # as errors.hard_exit's hook does
        time.sleep(0.3)  # several beats due
        assert status.read_status(str(tmp_path), "p")["status"] == "failed"
    with status.heartbeat(str(tmp_path), "p", every=0.05):  # the next launch beats again
        assert status.read_status(str(tmp_path), "p")["status"] == "running"
