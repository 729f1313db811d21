"""Loader worker processes: how they start, how they are set up, and what happens when one stops.

Start: from a fork server (toolkit/forkserver.py), never forked from the training process.

Stop: every wait for a batch is bounded (DataLoader's `timeout`), and a worker that dies (killed,
out of memory) or gives no batch within the bound ends the run with one line naming it
(`toolkit.errors.Stalled`) instead of a traceback or a wait without end.
"""
import atexit
import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import re
import signal
import sys
import threading
import time

import torch

from toolkit.data.source_watch import AFTER as _AFTER
from toolkit.errors import Stalled, UserError
from toolkit import forkserver
from toolkit.forkserver import NO_MAIN_GUARD


def context():
    """The workers' start method: toolkit/forkserver.py's, with end_workers run at exit."""
    return forkserver.context(at_exit=end_workers)


def worker_init(_worker_id):
    """Each worker: one thread for torch and OpenCV (the workers already use every core); Ctrl-C and
    SIGTERM are the training process's to handle (the workers share its process group, which
    torchrun and SLURM signal whole): it stops cleanly, or on a second signal kills its workers
    (toolkit/engine/signals.py). A worker ended by the group's SIGTERM would fail the stop's last
    steps, so the first SIGTERM (and its copy) is let pass and a later one ends it (worker_signals)."""
    import cv2
    worker_signals()
    watch_owner()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def watch_owner():
    """End this worker within a second of the training process's end, however it ended (SIGKILL by
    the OOM killer or by torchrun after --shutdown-timeout). A loader worker is a child of the fork
    server, and DataLoader's own watchdog checks its parent, the fork server, which in turn lives as
    long as any worker holds its liveness pipe: without this, both outlived the run (holding /dev/shm
    and the records) for good. The owner is multiprocessing's parent_process(), the process that asked
    for the worker (forkserver and spawn alike); a thread waits on its pidfd."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    try:
        fd = os.pidfd_open(parent.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel), or the owner is gone already
        if not _alive(parent.pid):
            os._exit(0)
        fd = None
    threading.Thread(target=_end_with, args=(parent.pid, fd), name="owner-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _end_with(pid: int, fd):
    """Wait for process `pid` to end (its pidfd readable; else polled), then end this process."""
    import select
    while True:
        if fd is not None:
            select.select([fd], [], [])
            break
        if not _alive(pid):
            break
        time.sleep(1.0)
    os._exit(0)  # nobody is left to read what this worker would make


def die_with_parent():
    """A direct child of the training process (DALI's source workers): the kernel ends it when the
    training process ends (PR_SET_PDEATHSIG), SIGKILL or not; on systems without it, watch_owner."""
    owner = multiprocessing.parent_process()
    parent = owner.pid if owner is not None and owner.pid else os.getppid()
    try:
        import ctypes
        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        watch_owner()
        return
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(0)


# DataLoader notices a dead worker through SIGCHLD, which only a worker's parent gets: a fork
# server's worker is not the training process's child, so a worker killed while the loader waits
# for its batch would be found only when the whole --timeout ran out. The wait is therefore made of
# slices of at most this many seconds, after each of which DataLoader checks its workers are alive.
SLICE = 5.0


def wait_slice(timeout: float) -> float:
    """DataLoader's `timeout`: one slice of the bounded wait for a batch (see next_batch)."""
    return min(SLICE, timeout)


def next_batch(it, timeout: float):
    """next(it) of a DataLoader iterator made with timeout=wait_slice(timeout): waits at most
    `timeout` s in all (rounded up to whole slices), a dead worker found within a slice (DataLoader's
    own liveness check)."""
    waited, step = 0.0, wait_slice(timeout)
    while True:
        try:
            return next(it)
        except RuntimeError as exc:
            if not _TIMEOUT.search(str(exc)):
                raise
            waited += step
            if waited >= timeout:
                raise RuntimeError(f"DataLoader timed out after {waited:g} seconds") from None


def worker_signals():
    """A loader worker's signals (DALI's workers too): Ctrl-C and a hang-up are the training
    process's to handle, a first SIGTERM is let pass (_first_sigterm)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _first_sigterm)


# seconds: one stop request delivered twice (SLURM signals every process of the step, and torchrun
# forwards its own copy to each rank's process group): toolkit/engine/signals.py treats it alike
DUPLICATE = 0.5
_first_sigterm_at = []


def _first_sigterm(_signum, _frame):
    """A SIGTERM to the whole process group (SLURM's preemption, `kill -TERM -- -PGID`) reaches the
    workers too: the training process stops at the end of the step and writes a checkpoint, which
    needs its workers alive until then (they end with the loader). Under torchrun the same request
    comes twice within milliseconds (SLURM's and torchrun's): both are let pass. A SIGTERM after
    that (terminate() of a worker that did not end when asked: DataLoader's, then multiprocessing's
    at exit, or a person's second Ctrl-C) ends it."""
    now = time.monotonic()
    if not _first_sigterm_at:
        _first_sigterm_at.append(now)
    elif now - _first_sigterm_at[0] > DUPLICATE:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


# --- DALI's external-source workers (toolkit/data/dali_backend.py): the same rule by other means --------
QUIET = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
GRACE = 10  # seconds a source worker serves on after a first SIGTERM (the stop takes a step or two)
_starting = False
_exit_hook = False


@contextlib.contextmanager
def quiet_children():
    """Worker processes started inside (DALI's source workers: forked on the CPU, spawned on GPUs)
    leave Ctrl-C, SIGHUP and the group's SIGTERM to the training process, which torchrun and SLURM
    signal together with its children: a source worker ended by them fails the stop's last batch.
    DALI has no worker hook, so the signals stay blocked here meanwhile (the mask is inherited): a
    forked child calls serve_quietly() before it runs any Python (os.register_at_fork), a spawned
    one when it unpickles its source; this process gets any signal that came once the block ends."""
    global _starting, _exit_hook
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _exit_hook:  # multiprocessing's own exit hook would terminate() and then join without a bound
        atexit.register(end_workers)
        _exit_hook = True
    # the first spawned child starts multiprocessing's resource tracker, which unblocks SIGINT and
    # SIGTERM after its own start: started here first, it leaves the block below alone
    multiprocessing.resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, QUIET)
    _starting = True
    try:
        yield
    finally:
        _starting = False
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def serve_quietly():
    """In a source worker: the loader workers' rule (worker_signals), and the end GRACE s after the
    first SIGTERM: DALI ends its workers with terminate() and then waits without a bound."""
    if threading.current_thread() is not threading.main_thread():
        return
    worker_signals()
    die_with_parent()
    signal.signal(signal.SIGTERM, _grace_sigterm)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, QUIET)


def _grace_sigterm(signum, frame):
    """As a torch loader worker takes it (_first_sigterm), and in any case the end GRACE s after the
    first (SIGALRM's default action)."""
    if not _first_sigterm_at:
        signal.alarm(GRACE)
    _first_sigterm(signum, frame)


def _forked():
    if _starting:
        serve_quietly()


os.register_at_fork(after_in_child=_forked)



_TIMEOUT = re.compile(r"DataLoader timed out after ([\d.]+) seconds")
_DIED = re.compile(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\)? (?:is killed by signal: (.+?)\.|exited unexpectedly)")


def stalled(exc: Exception, loader, what: str):
    """The one-line Stalled error for a DataLoader failure (a timeout, a dead worker), or None when
    `exc` is something else. `loader`: the torch DataLoader (None: judge by the message alone, as
    for DataLoader's SIGCHLD handler, which raises wherever the main thread is); `what` names the
    split. A worker that dies while its batch crosses over surfaces as a broken connection
    (ConnectionResetError, EOFError) rather than as DataLoader's own message."""
    text = str(exc)
    after = _AFTER
    m = _TIMEOUT.search(text)
    if m:
        return Stalled(f"loader {_expected_worker(loader)} gave no batch for {m.group(1)} s while reading {what}"
                       f"{after}a stuck worker or slow storage; raise --timeout if the storage is slow, then "
                       "continue with tools/resume.py")
    dead = _dead_workers(loader)
    m = _DIED.search(text)
    if not dead and m:
        dead = f"pid {m.group(1).strip()}" + (f", killed by signal {m.group(2)}" if m.group(2) else "")
    if not dead:
        return None
    if f"exit status {NO_MAIN_GUARD}" in dead:
        script = getattr(sys.modules.get("__main__"), "__file__", None) or "the script"
        return UserError(f"{script} builds a loader when imported, and loader workers (started from a fork "
                         "server) import it again: put that code under `if __name__ == \"__main__\":`")
    if "exit status" in dead:  # a Python error in the worker, printed above by the worker itself
        return Stalled(f"loader worker ({dead}) ended while reading {what}{after}see its error above, "
                       "then continue with tools/resume.py")
    return Stalled(f"loader worker ({dead}) died while reading {what}{after}check the machine's memory "
                   "(dmesg: the OOM killer) or lower --workers, then continue with tools/resume.py")


def _dead_workers(loader) -> str:
    """'pid P, killed by signal SIGKILL' of the loader's workers that are gone ('' if none)."""
    workers = getattr(getattr(loader, "_iterator", None), "_workers", None) or []
    if workers:  # a broken connection can come before the fork server has reported the death
        multiprocessing.connection.wait([w.sentinel for w in workers], timeout=2)
    out = []
    for w in workers:
        code = w.exitcode
        if code is not None:
            how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            out.append(f"pid {w.pid}, {how}")
    return "; ".join(out)


def _expected_worker(loader) -> str:
    """'worker K (pid P)' of the batch the loader waits for, from DataLoader's iterator (private
    state: 'a worker' where this torch lays it out otherwise)."""
    it = getattr(loader, "_iterator", None)
    try:
        worker_id = it._task_info[it._rcvd_idx][0]
        return f"worker {worker_id} (pid {it._workers[worker_id].pid})"
    except Exception:
        return "a worker"


def end_workers():
    """Kill this process's worker processes now (every loader's): a hung worker never reads the
    shutdown request DataLoader would send it."""
    from toolkit.data.source_watch import close_all
    close_all()  # the deaths below are no news
    for proc in multiprocessing.active_children():
        proc.kill()
    for proc in multiprocessing.active_children():
        proc.join(5)
