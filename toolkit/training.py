"""A training run composed: the engine (toolkit/engine/run.py) with what it does not know of,
handed in here: transfer learning (toolkit/transfer/hook.py: --init-from, --freeze-*,
--head-lr-mult) and the status file the journal reads (toolkit/journal.py). Behind tools/train.py
and tools/resume.py.
"""
import functools
import json
import os
import socket
import time

from toolkit.atomic import atomic_open
from toolkit.engine import checkpoint
from toolkit.engine import run as engine
from toolkit.engine.config import TrainConfig
from toolkit.journal import status_path
from toolkit.transfer.hook import Transfer


def recorded(run_fn):
    """LOGS/PREFIX.status.json for tools/runs.py and tools/sweep.py (what the log cannot say): "running"
    with the pid and host while the run trains (a pid that is gone: killed), then how the launch
    ended: finished (exit 0), stopped (130), failed (2, or an exception). Rank 0 writes it, atomically.
    A fresh run that will refuse to overwrite an earlier run's checkpoints leaves that run's file."""
    def write(cfg, status, **extra):
        try:
            os.makedirs(cfg.logs_dir or ".", exist_ok=True)
            with atomic_open(status_path(cfg.logs_dir, cfg.prefix)) as f:
                json.dump({"status": status, "pid": os.getpid(), "host": socket.gethostname(),
                           "time": time.time(), **extra}, f)
        except OSError:  # an unwritable --logs-dir: the run's pre-flight check says so in one line
            pass

    @functools.wraps(run_fn)
    def wrapper(cfg: TrainConfig, state=None, resumed_from=None) -> int:
        if os.environ.get("RANK", "0") != "0" or (
                state is None and checkpoint.list_checkpoints(cfg.checkpoints_dir, cfg.prefix)):
            return run_fn(cfg, state, resumed_from)
        write(cfg, "running")
        code = None
        try:
            code = run_fn(cfg, state, resumed_from)
            return code
        finally:
            write(cfg, {0: "finished", 130: "stopped"}.get(code, "failed"), code=code)
    return wrapper


@recorded
def run(cfg: TrainConfig, state=None, resumed_from=None) -> int:
    """tools/train.py: train cfg's run; the process's exit code (toolkit/engine/run.py)."""
    return engine.run(cfg, state, resumed_from, hook=Transfer)


def resume(checkpoints_dir: str, prefix, epoch, lr=None, **overrides) -> int:
    """tools/resume.py: continue a run from PREFIX-%04d.pt (or the newest checkpoint) with optional
    overrides."""
    cfg, state, path = engine.resume_point(checkpoints_dir, prefix, epoch, lr, **overrides)
    return run(cfg, state, resumed_from=path)
