"""The start method of the loader's worker processes.

Workers come from a fork server (a clean process started once, with the workers' modules imported
and no thread ever run), never forked from the process that asks for them. A fork copies the
parent's thread pools in a broken state: after a process has used OpenCV's pool (the loader's CPU
normalisation, a resize), `cv2.setNumThreads(1)` in a forked child deadlocks under OpenCV 5.x
(pthread_cond_destroy on the copied pool), and torch's OpenMP pool, nvImageCodec's and DALI's
threads carry the same risk. The fork server costs one interpreter start per run (about a second;
each worker is then a fork of it) and nothing per batch or image.
"""
import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading

# imported once in the fork server, so that workers start warm
PRELOAD = ["toolkit.data.torch_backend"]
_CONTEXT = None
# a worker's exit status when it found itself asked for workers while importing the user's script
NO_MAIN_GUARD = 86


def context(at_exit=None):
    """The multiprocessing context for worker processes (a fork server; spawn where there is none).
    `at_exit`: run at exit, before multiprocessing's own exit hook, once the fork server started."""
    global _CONTEXT
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        _refuse_in_worker()
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(PRELOAD)
            _start_ignoring_ctrl_c(at_exit)
        else:
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def _start_ignoring_ctrl_c(at_exit=None):
    """Start the fork server with SIGINT ignored (kept across its exec): a terminal's Ctrl-C reaches
    the whole process group, and would otherwise interrupt the server's imports with a traceback.
    Its children inherit that: loader workers leave Ctrl-C to the training process anyway."""
    if threading.current_thread() is not threading.main_thread():
        return  # started on first use instead
    # SIGTERM and SIGHUP too: torchrun and SLURM signal the whole process group, and a fork server
    # ended by them takes the workers' exit reports with it (DataLoader then calls them dead)
    quiet = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in quiet}
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # workers ignore a first SIGTERM (toolkit/data/workers.py), so multiprocessing's own exit hook
    # (SIGTERM, then join without a bound) would wait for live persistent workers: the caller's
    # at_exit ends them first (atexit runs it before multiprocessing's hook, registered earlier)
    if at_exit is not None:
        atexit.register(at_exit)


def _refuse_in_worker():
    """A worker (or packer) imports the script that started it again, as __mp_main__; a script that
    builds a loader at its top level asks for workers again here. Python's own error is a page of
    text from each worker: one line instead, and an exit status the parent names (workers.stalled)."""
    script = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "the script"
    sys.stderr.write(f"Error: {script} builds a loader when imported, and loader workers import it again: "
                     "put that code under `if __name__ == \"__main__\":`\n")
    sys.stderr.flush()
    os._exit(NO_MAIN_GUARD)
