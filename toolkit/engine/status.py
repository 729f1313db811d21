"""LOGS/PREFIX.status.json: whether a run is alive, and how its last launch ended.

Rank 0 writes it (atomically): "running" when a launch starts, then every HEARTBEAT_S seconds from
a thread of its own (it beats while the process lives, whatever the training loop is waiting for),
then how the launch ended (finished, stopped, failed). The heartbeat is the one truth of "alive":
a "running" file not refreshed within LOST_AFTER_S is "lost" (the process was killed with SIGKILL,
its node died, or it is frozen), whichever host it names; on the host it names, a pid that is gone
says so at once. The file also names the SLURM job (SLURM_JOB_ID) that ran it: the same job,
requeued after a hard kill, knows that the "running" launch was its own earlier life.
"""
import contextlib
import json
import os
import socket
import threading
import time
from typing import Optional, Tuple

from toolkit.atomic import atomic_open

STATUS_SUFFIX = ".status.json"
HEARTBEAT_S = 30.0
LOST_AFTER_S = 300.0  # ten missed beats (a node's clock a little off, a long checkpoint write)


def status_path(logs_dir: str, prefix: str) -> str:
    return os.path.join(logs_dir, prefix + STATUS_SUFFIX)


def read_status(logs_dir: str, prefix: str) -> Optional[dict]:
    try:
        with open(status_path(logs_dir, prefix)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# one writer at a time, and none of the heartbeat's after the end: the end may be written from a signal
# handler or another thread (errors.hard_exit) while the heartbeat thread is mid-beat, and a late beat
# would turn "failed" back into "running" (then "lost")
_WRITING = threading.RLock()
_ENDED = threading.Event()


def write_status(logs_dir: str, prefix: str, status: str, **extra):
    if not _WRITING.acquire(timeout=10):  # bounded: a write in flight is one small file
        return
    try:
        if status == "running" and _ENDED.is_set():
            return
        if status != "running":
            _ENDED.set()
        _write(logs_dir, prefix, status, **extra)
    finally:
        _WRITING.release()


def _write(logs_dir: str, prefix: str, status: str, **extra):
    try:
        os.makedirs(logs_dir or ".", exist_ok=True)
        now = time.time()
        with atomic_open(status_path(logs_dir, prefix)) as f:
            json.dump({"status": status, "pid": os.getpid(), "host": socket.gethostname(),
                       "job": os.environ.get("SLURM_JOB_ID"), "time": now, "heartbeat": now,
                       "heartbeat_s": HEARTBEAT_S, **extra}, f)
    except OSError:  # an unwritable --logs-dir: the run's pre-flight check says so in one line
        pass


@contextlib.contextmanager
def heartbeat(logs_dir: str, prefix: str, every: float = HEARTBEAT_S):
    """"running" now and every `every` seconds until the block ends (the caller then writes the end)."""
    started = time.time()
    _ENDED.clear()  # a new launch (in the same process: tests, a sweep's in-process runs)
    write_status(logs_dir, prefix, "running", started=started)
    done = threading.Event()

    def beat():
        while not done.wait(every):
            write_status(logs_dir, prefix, "running", started=started)
    thread = threading.Thread(target=beat, name="status-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)  # a write in flight finishes before the end is written


def liveness(status: dict, now: Optional[float] = None) -> Tuple[str, str]:
    """("running" | "lost" | "gone", detail) of a status file that says "running"."""
    now = time.time() if now is None else now
    pid, host = status.get("pid"), status.get("host")
    last = status.get("heartbeat", status.get("time"))
    where = f"pid {pid} on {host}"
    here = host == socket.gethostname()
    if here and not _pid_alive(pid):
        return "gone", f"process {pid} is gone without a word (killed?)"
    if here and "heartbeat" not in status:  # written before the heartbeat: its live pid says it all
        return "running", where
    if not isinstance(last, (int, float)):
        return "lost", f"{where}: the status file has no heartbeat"
    if now - last > LOST_AFTER_S:
        return "lost", (f"{where}: no heartbeat for {now - last:.0f} s (killed, its node down, or frozen; "
                        f"a running launch beats every {HEARTBEAT_S:g} s)")
    return "running", where


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True


def own_earlier_life(status: Optional[dict]) -> bool:
    """Whether a "running" status was written by this SLURM job before it was requeued (the job id
    stays the same across requeues; a job runs one launch at a time)."""
    job = os.environ.get("SLURM_JOB_ID")
    return bool(status and job and status.get("job") == job)
