"""The learning rate as a pure function of the position in training and the configuration.

Position is in epochs (`epoch + batch / batches_per_epoch`), so a resumed run needs only its
position, a run resumed on a different number of processes keeps its schedule, and a new `--lr`
given at resume starts a new schedule at `cfg.lr_from_epoch` (constant unless one is given).
Milestones of step/multistep are absolute epochs.
"""
import math

from toolkit.engine.config import TrainConfig

CONTINUOUS = ("poly", "linear", "cosine")


def get_lr(cfg: TrainConfig, t: float) -> float:
    """LR at training position t (in epochs)."""
    start, end = cfg.lr_from_epoch, float(cfg.epochs)
    if cfg.warmup_epochs and t < start + cfg.warmup_epochs:  # linear warmup from 0 to lr
        return cfg.lr * (t - start + 1e-8) / cfg.warmup_epochs
    s = cfg.lr_schedule
    if s == "constant":
        return cfg.lr
    if s == "multistep":
        return cfg.lr * cfg.lr_factor ** sum(start < m <= t for m in cfg.lr_step_epochs)
    if s == "step":
        period = cfg.lr_step_epochs[0]
        return cfg.lr * cfg.lr_factor ** math.floor((t - start) / period)
    begin = start + cfg.warmup_epochs
    progress = min(max((t - begin) / max(end - begin, 1e-8), 0.0), 1.0)
    if s == "poly":
        return cfg.lr * (1 - progress) ** cfg.poly_power
    if s == "linear":
        return cfg.lr * (1 - progress)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))  # cosine
