"""The start method of every worker process the toolkit makes (loader workers, im2rec's packers).

Workers come from a fork server (a clean process started once, with the workers' modules imported
and no thread ever run), never forked from the process that asks for them. A fork copies the
parent's thread pools in a broken state: after a process has used OpenCV's pool (the loader's CPU
normalisation, a resize), `cv2.setNumThreads(1)` in a forked child deadlocks under OpenCV 5.x
(pthread_cond_destroy on the copied pool), and torch's OpenMP pool, nvImageCodec's and DALI's
threads carry the same risk. The fork server costs one interpreter start per run (about a second;
each worker is then a fork of it) and nothing per batch or image.
"""
import multiprocessing

# imported once in the fork server, so that workers start warm
PRELOAD = ["toolkit.im2rec", "toolkit.data.torch_backend"]
_CONTEXT = None


def context():
    """The multiprocessing context for worker processes (a fork server; spawn where there is none)."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(PRELOAD)
        else:
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT
