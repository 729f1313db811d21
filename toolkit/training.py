"""A training run composed: the engine's run (toolkit/engine/run.py) with what the engine does not
know of, handed in here: transfer learning (toolkit/transfer/hook.py: --init-from, --freeze-*,
--head-lr-mult, the normalisation of a run). Behind tools/train.py and tools/resume.py.
"""
from toolkit.engine import run as engine
from toolkit.engine.config import TrainConfig
from toolkit.transfer.hook import Transfer


def run(cfg: TrainConfig, state=None, resumed_from=None) -> int:
    """tools/train.py: train cfg's run; the process's exit code (toolkit/engine/run.py)."""
    return engine.run(cfg, state, resumed_from, hook=Transfer)


def resume(checkpoints_dir: str, prefix, epoch, lr=None, **overrides) -> int:
    """tools/resume.py: continue a run from PREFIX-%04d.pt (or the newest checkpoint) with optional
    overrides."""
    cfg, state, path = engine.resume_point(checkpoints_dir, prefix, epoch, lr, **overrides)
    return run(cfg, state, resumed_from=path)
