"""The bound on a wait for a DALI batch (toolkit/data/dali_backend.py): a source worker that dies, or
no batch within --timeout, ends the wait with one line (toolkit/data/workers.py has the same rule for
the torch backend's workers)."""
import contextlib
import multiprocessing.connection
import signal
import threading
import time

from toolkit.errors import Stalled

_WATCHES = []


def close_all():
    """Every watch of this process (end_workers: the workers' deaths that follow are no news)."""
    for watch in list(_WATCHES):
        watch.close()


class SourceWatch:
    """The bound on a wait for a DALI batch (toolkit/data/dali_backend.py). DALI waits without end
    for a source worker that died (SIGKILL, the OOM killer: it waits in multiprocessing's Condition
    for the dead one's acknowledgement) or hangs. A thread watches the workers (their sentinels) and
    the wait (`waiting()`): on a death, or after `timeout` s without a batch, it interrupts the main
    thread's wait with a signal whose handler raises the one-line Stalled error; a main thread that
    does not come back within GRACE s (a wait inside DALI's C++) is ended by the thread itself."""
    SIGNAL = signal.SIGURG  # ignored by default: a late one after the handler is gone does nothing
    GRACE = 5.0

    def __init__(self, processes, timeout: float, what: str):
        self.processes, self.timeout, self.what = list(processes), timeout, what
        self.since, self.error, self.heard = None, None, threading.Event()
        self._closed = threading.Event()
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(self.SIGNAL) is not _raise_pending:  # one handler for every watch
            signal.signal(self.SIGNAL, _raise_pending)  # (a loader read from another thread: the GRACE end)
        self._thread = threading.Thread(target=self._watch, name="dali-source-watch", daemon=True)
        self._thread.start()
        _WATCHES.append(self)  # end_workers closes it before it ends the workers

    @contextlib.contextmanager
    def waiting(self):
        """Around a wait for a batch: the --timeout bound runs while inside."""
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def close(self):
        """No more news from these workers (their pipeline closes them: exit 0 or SIGTERM)."""
        self._closed.set()
        with contextlib.suppress(ValueError):
            _WATCHES.remove(self)

    def _watch(self):
        sentinels = [p.sentinel for p in self.processes]
        while not self._closed.is_set():
            if sentinels:
                multiprocessing.connection.wait(sentinels, timeout=0.5)
            else:
                self._closed.wait(0.5)
            if self._closed.is_set():
                return
            # 0 and SIGTERM: DALI closing its pool (a pipeline that went without close()); the rest died
            dead = [p for p in self.processes if p.exitcode not in (None, 0, -signal.SIGTERM)]
            if dead:
                return self._fire(self._dead(dead[0]))
            if self.since is not None and time.monotonic() - self.since > self.timeout:
                return self._fire(Stalled(
                    f"DALI gave no batch for {self.timeout:g} s while reading {self.what}{AFTER}a stuck "
                    "source worker or slow storage; raise --timeout if the storage is slow, then continue "
                    "with tools/resume.py"))

    def _dead(self, proc):
        code = proc.exitcode
        how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return Stalled(f"DALI source worker (pid {proc.pid}, {how}) died while reading {self.what}{AFTER}"
                       "check the machine's memory (dmesg: the OOM killer) or lower --workers, then continue "
                       "with tools/resume.py")

    def _fire(self, error: Stalled):
        error.hard = True  # DALI's pool would wait for the dead worker again when it closes: leave at once
        self.error = error
        with contextlib.suppress(Exception):
            signal.pthread_kill(threading.main_thread().ident, self.SIGNAL)
        if not self.heard.wait(self.GRACE):
            import logging
            logging.getLogger("toolkit").error(f"Error: {error.message}")
            from toolkit.errors import hard_exit
            close_all()  # as workers.end_workers, which imports this module (no circle)
            for proc in multiprocessing.active_children():
                proc.kill()
            hard_exit(error.exit_code)



def _raise_pending(_signum, _frame):
    """SourceWatch.SIGNAL's handler, in the main thread: raise a watch's error (once)."""
    for watch in list(_WATCHES):
        if watch.error is not None and not watch.heard.is_set():
            watch.heard.set()
            raise watch.error


AFTER = "; the run stops here (checkpoints already written are kept): "
