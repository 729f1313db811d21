"""Write files under a temporary name and rename them into place when complete.

A crash, a kill -9 or a Ctrl-C never leaves a half-written file under its final name: the temp
file (`.NAME.tmp-PID`) is either removed or left beside it under a name nobody reads.
"""
import contextlib
import os
import signal
import threading


def temp_path(path: str) -> str:
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp path to write; on success fsync it and rename it to `path`."""
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """Open a temp file for writing; rename it to `path` when the block ends without error."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


@contextlib.contextmanager
def signals_held():
    """Ctrl-C, SIGTERM and SIGHUP held back and delivered when the block ends (a signal mask would
    not do: the signal goes to any thread that does not block it, and Python runs its handler in
    the main thread at the next bytecode)."""
    got = []
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    if threading.current_thread() is not threading.main_thread():
        sigs = []
    previous = {sig: signal.getsignal(sig) for sig in sigs}
    held = [sig for sig, handler in previous.items() if handler not in (signal.SIG_IGN, None)]
    for sig in held:
        signal.signal(sig, lambda signum, _frame: got.append(signum))
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, previous[sig])
        for signum in got:
            signal.raise_signal(signum)
