"""Loader workers: safe to start after the training process used thread pools, and every wait
bounded (a worker that hangs or dies ends the run with one line)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torchvision.io as tvio

from tests.conftest import REPO
from toolkit import recordio
from toolkit.data import build_loader
from toolkit.errors import Stalled


def _write(prefix, n, size, rng):
    with recordio.IndexedRecordWriter(prefix + ".idx", prefix + ".rec") as w:
        for i in range(n):
            img = torch.from_numpy(rng.integers(0, 255, (3, size, size), dtype=np.uint8))
            w.write_idx(i, recordio.pack((0, float(i % 4), i, 0), tvio.encode_jpeg(img).numpy().tobytes()))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(0)
    _write(str(d / "train"), 96, 72, rng)
    _write(str(d / "val"), 64, 72, rng)
    return str(d)


def test_eval_workers_start_after_the_cpu_normalisation_used_opencv(data_dir):
    """The quickstart's hang: the training process normalises batches with OpenCV (its thread pool
    runs), then the evaluation loader starts its workers; a worker forked from it deadlocked in
    cv2.setNumThreads under OpenCV 5.x (every time, with the pool idle for a moment before the fork,
    as while a checkpoint is written). Runs in a child process with a bound."""
    script = textwrap.dedent(f"""
        import time, torch
        from toolkit.data import build_loader
        from toolkit.data.torch_backend import normalize
        d = {data_dir!r}
        train = build_loader(d, "train", train=True, batch_size=32, image_size=64, workers=2, backend="torch")
        train.set_epoch(0)
        assert sum(len(y) for _, y in train) == 96          # its batches go through the CPU normalisation
        images = torch.randint(0, 255, (32, 3, 64, 64), dtype=torch.uint8)
        for _ in range(5):                                  # and so does this, for certain
            normalize(images, train.mean, train.inv_std, torch.device("cpu"), torch.float32, False)
        time.sleep(0.5)
        val = build_loader(d, "val", train=False, batch_size=32, image_size=64, workers=2, backend="torch")
        val.set_epoch(0)
        print("evaluated", sum(len(y) for _, y in val))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                              env=env, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the evaluation loader's workers hung after the training process used OpenCV")
    assert proc.returncode == 0, proc.stderr
    assert "evaluated 64" in proc.stdout


def test_im2rec_packers_start_after_this_process_used_opencv(tmp_path):
    """im2rec's packers are forked: in a process that used OpenCV's thread pool before (the toy set
    made inside a training process, a user's script) they deadlocked in cv2.setNumThreads."""
    script = textwrap.dedent(f"""
        import time, numpy as np, cv2
        from toolkit import toy
        from toolkit.im2rec import PackOptions, pack_prefix
        from toolkit.lists import make_lists
        a = np.random.randint(0, 255, (32, 3, 4096), np.uint8)
        dst = np.empty((32, 3, 4096), np.float32)
        for _ in range(5):
            for c in range(3):
                cv2.addWeighted(a[:, c], 0.5, a[:, c], 0.0, 1.0, dst=dst[:, c], dtype=cv2.CV_32F)
        time.sleep(0.5)
        root = toy.make_toy_images({str(tmp_path / "img")!r}, images_per_class=3, num_classes=4, seed=0)
        make_lists({str(tmp_path / "p")!r}, root, recursive=True)
        print("records", sum(r.records for r in pack_prefix({str(tmp_path / "p")!r}, root, PackOptions(num_thread=2))))
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("im2rec's packer processes hung after this process used OpenCV")
    assert proc.returncode == 0, proc.stderr
    assert "records 12" in proc.stdout


class _HangOnce:
    """A transform that never returns for one sample (a worker stuck on a dead file system)."""

    def __init__(self, inner, position):
        self.inner, self.shape, self.position = inner, inner.shape, position
        self.calls = 0

    def __call__(self, payload, seed, out=None):
        self.calls += 1
        if self.calls == self.position:
            time.sleep(3600)
        return self.inner(payload, seed, out)


def _loader(data_dir, **kw):
    args = dict(split="train", train=True, batch_size=8, image_size=32, workers=2, backend="torch")
    args.update(kw)
    return build_loader(data_dir, **args)


def test_a_worker_that_never_answers_ends_the_epoch_with_one_line(data_dir):
    loader = _loader(data_dir, timeout=3)
    dataset = loader.loader.dataset  # workers start (and receive it) at the first iteration
    dataset.transform = _HangOnce(dataset.transform, position=12)
    loader.set_epoch(0)
    t0 = time.monotonic()
    with pytest.raises(Stalled) as err:
        for _ in loader:
            pass
    message = err.value.message
    assert time.monotonic() - t0 < 30
    assert "\n" not in message and "gave no batch for 3 s" in message and "--timeout" in message
    assert "split 'train' of" in message and "pid" in message


def _kill_and_expect_one_line(victim, batches):
    """SIGKILL the worker `victim`; reading `batches()` must end within 30 s with the one line."""
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(Stalled) as err:
        for _ in batches():
            pass
    assert time.monotonic() - t0 < 30
    message = err.value.message
    assert "\n" not in message and f"pid {victim}, killed by signal SIGKILL" in message


def test_a_worker_killed_with_sigkill_ends_the_epoch_with_one_line(data_dir):
    loader = _loader(data_dir, timeout=60)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    victim = loader.loader._iterator._workers[0].pid
    _kill_and_expect_one_line(victim, lambda: it)


def test_a_worker_killed_between_epochs_is_found_within_seconds_not_at_the_timeout(data_dir):
    """A fork server's worker is not this process's child (no SIGCHLD for DataLoader): its death
    must still be found within a few seconds, not when the whole --timeout has run out."""
    loader = _loader(data_dir, timeout=120)
    loader.set_epoch(0)
    for _ in loader:
        pass
    victim = loader.loader._iterator._workers[0].pid
    loader.set_epoch(1)
    _kill_and_expect_one_line(victim, lambda: loader)


def test_a_sigterm_to_the_process_group_leaves_the_workers_to_finish_the_step(data_dir):
    """SLURM's preemption signals every process: the workers must outlive the first SIGTERM (the
    training process then writes its checkpoint), and a second one (terminate()) still ends them."""
    import multiprocessing.connection
    loader = _loader(data_dir, timeout=60)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    workers = loader.loader._iterator._workers
    for w in workers:
        os.kill(w.pid, signal.SIGTERM)
    assert len(list(it)) == len(loader) - 1  # the epoch goes on, every batch
    time.sleep(1.0)  # a SIGTERM within DUPLICATE s of the first is the same request (next test)
    os.kill(workers[0].pid, signal.SIGTERM)
    assert multiprocessing.connection.wait([workers[0].sentinel], timeout=20)


def test_the_bounded_wait_gives_up_after_the_whole_timeout_not_one_slice():
    from toolkit.data import workers

    class Slow:
        calls = 0

        def __next__(self):
            self.calls += 1
            raise RuntimeError(f"DataLoader timed out after {workers.wait_slice(12.0)} seconds")
    it = Slow()
    with pytest.raises(RuntimeError, match="timed out after 15 seconds"):
        workers.next_batch(it, 12.0)
    assert it.calls == 3  # 5 + 5 + 5 s: every slice, then one line with the whole wait


NO_GUARD = """
import sys
from toolkit.data import build_loader
from toolkit.errors import UserError
loader = build_loader(sys.argv[1], split="train", batch_size=8, image_size=32, workers=2, backend="torch")
loader.set_epoch(0)
try:
    next(iter(loader))
except UserError as exc:
    print("USER ERROR:", exc.message)
    sys.exit(2)
"""


@pytest.mark.slow
def test_a_script_without_the_main_guard_gets_one_line_naming_the_guard(data_dir, tmp_path):
    """Workers import the user's script again: one that builds a loader at its top level is told
    to add the guard (not a page of multiprocessing text per worker, nor 'the OOM killer')."""
    script = tmp_path / "noguard.py"
    script.write_text(NO_GUARD)
    proc = subprocess.run([sys.executable, str(script), data_dir], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"USER ERROR: {script} builds a loader when imported" in proc.stdout
    assert 'if __name__ == "__main__":' in proc.stdout and "Traceback" not in proc.stderr


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _tree(pid):
    out = []
    for child in _children(pid):
        out += [child] + _tree(child)
    return out


def _rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return int(env.get(b"RANK", b"-1"))


@pytest.mark.slow
def test_a_rank_that_stops_answering_ends_the_run_with_one_line(tmp_path):
    """torchrun with 2 ranks; rank 1 is frozen (SIGSTOP) mid-epoch: rank 0's next collective gives
    up after --timeout, it ends with one line naming the cause, torchrun takes the frozen rank
    down, and no process is left."""
    from toolkit.toy import ensure_toy_dataset
    data = ensure_toy_dataset(str(tmp_path / "toy"), images_per_class=12, quiet=True)
    log = tmp_path / "logs" / "hang.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--shutdown_timeout", "3", "tools/train.py", "--recipe", "resnet20", "--image-size", "32",
           "--batch-size", "8", "--workers", "1", "--epochs", "40", "--log-every", "1", "--timeout", "8",
           "--data", data, "--logs-dir", str(tmp_path / "logs"), "--checkpoints-dir", str(tmp_path / "ck"),
           "--prefix", "hang"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (log.exists() and "Epoch[0] Batch" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        ranks = {_rank_of(p): p for p in _children(proc.pid)}
        everything = _tree(proc.pid)
        os.kill(ranks[1], signal.SIGSTOP)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert elapsed < 8 + 30 + 30, elapsed  # --timeout, torchrun's SIGTERM-to-SIGKILL wait, slack
    lines = [line for line in out.splitlines() if "another rank stopped answering" in line]
    assert lines and "rank 0:" in lines[0] and "--timeout" in lines[0] and "tools/resume.py" in lines[0]
    time.sleep(6)  # loader workers notice their fork server is gone within 5 s
    left = [p for p in everything if os.path.exists(f"/proc/{p}") and
            open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    assert not left, f"processes left behind: {left}"


def test_slurm_and_torchrun_sigterms_together_leave_the_workers_to_finish_the_step(data_dir):
    """Under torchrun, SLURM's preemption reaches a worker twice within milliseconds: SLURM's own
    SIGTERM and torchrun's forwarded one. That is one request: the workers must outlive both; a
    SIGTERM later than that (DataLoader's terminate()) still ends them."""
    import multiprocessing.connection
    loader = _loader(data_dir, timeout=60)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    workers = loader.loader._iterator._workers
    for w in workers:
        os.kill(w.pid, signal.SIGTERM)
    time.sleep(0.1)  # torchrun's forward comes after SLURM's has been handled
    for w in workers:
        os.kill(w.pid, signal.SIGTERM)
    assert len(list(it)) == len(loader) - 1  # the epoch goes on, every batch
    time.sleep(1.0)
    os.kill(workers[0].pid, signal.SIGTERM)
    assert multiprocessing.connection.wait([workers[0].sentinel], timeout=20)


def test_the_evaluation_tools_raise_a_stall_as_its_line_and_any_other_error_as_it_is():
    """tools/evaluate.py and the ensemble: a DataLoader timeout or a lost rank is the one line
    (Stalled), any other RuntimeError goes on as it was raised."""
    from toolkit.engine.dist import DistEnv
    from toolkit.engine.run import raise_stalled
    env = DistEnv(0, 0, 2, torch.device("cpu"))
    other = RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError) as err:
        raise_stalled(other, env, 60)
    assert err.value is other
    with pytest.raises(Stalled, match="gave no batch for 60 s"):
        raise_stalled(RuntimeError("DataLoader timed out after 60 seconds"), env, 60)
    with pytest.raises(Stalled, match="another rank stopped answering"):
        raise_stalled(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"), env, 60)


def _wait_in_main_thread(seconds):
    """Stands for DALI's wait for a dead source worker (a lock that nobody will release)."""
    import threading
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=seconds)


def test_a_dali_source_worker_killed_ends_the_wait_with_one_line_naming_it():
    """DALI waited for good for a SIGKILLed source worker (issue 22 item 6): the watch interrupts
    the main thread's wait with the one line."""
    import multiprocessing
    from toolkit.data.source_watch import SourceWatch
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    worker.start()
    watch = SourceWatch([worker], timeout=30, what="split 'train' of d")
    try:
        os.kill(worker.pid, signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(Stalled) as err, watch.waiting():
            _wait_in_main_thread(20)
        assert time.monotonic() - t < 5
        assert err.value.message.startswith(f"DALI source worker (pid {worker.pid}, killed by signal SIGKILL) died "
                                            "while reading split 'train' of d; the run stops here")
    finally:
        watch.close()
        worker.join(5)


def test_a_dali_wait_without_a_batch_ends_after_the_timeout():
    from toolkit.data.source_watch import SourceWatch
    watch = SourceWatch([], timeout=1, what="split 'val' of d")
    try:
        time.sleep(1.5)  # not waiting for a batch: no bound runs
        t = time.monotonic()
        with pytest.raises(Stalled) as err, watch.waiting():
            _wait_in_main_thread(20)
        assert 0.9 < time.monotonic() - t < 5
        assert err.value.message.startswith("DALI gave no batch for 1 s while reading split 'val' of d")
    finally:
        watch.close()
