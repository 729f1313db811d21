"""MXNet's training-log line shapes (Speedometer, fit loop), written by the engine and read by
the log parser. Keeping both sides on these functions is what makes the round trip exact.

Module-API shapes (MXNet >= 1.4):
    Epoch[0] Batch [0-50]\tSpeed: 112.84 samples/sec\taccuracy=0.1\ttop_k_accuracy_5=0.4\t...
    Epoch[0] Train-accuracy=0.100000
    Epoch[0] Time cost=12.345
    Saved checkpoint to "checkpoints/resnet18-0001.pt"
    Epoch[0] Validation-accuracy=0.300000
plus MXNet's `Update[%d]: Change learning rate to %0.5e`, our resume marker (RESUME_PREFIX) and,
after it, the branch marker (BRANCH_PREFIX) when the resume went back before the newest checkpoint.
"""
from typing import Dict, List

RESUME_PREFIX = "Resumed training from"
BRANCH_PREFIX = "New branch at"


def _metrics(metrics: Dict[str, float]) -> str:
    return "\t".join(f"{k}={v:f}" for k, v in metrics.items())


def batch_line(epoch: int, first: int, last: int, speed: float, metrics: Dict[str, float]) -> str:
    """Speedometer line; `metrics` may carry extra name=value fields (lr, data-time, ...)."""
    return f"Epoch[{epoch}] Batch [{first}-{last}]\tSpeed: {speed:.2f} samples/sec\t{_metrics(metrics)}"


def train_lines(epoch: int, metrics: Dict[str, float]) -> List[str]:
    return [f"Epoch[{epoch}] Train-{k}={v:f}" for k, v in metrics.items()]


def time_cost_line(epoch: int, seconds: float) -> str:
    return f"Epoch[{epoch}] Time cost={seconds:.3f}"


def checkpoint_line(path: str) -> str:
    return f'Saved checkpoint to "{path}"'


def validation_lines(epoch: int, metrics: Dict[str, float]) -> List[str]:
    return [f"Epoch[{epoch}] Validation-{k}={v:f}" for k, v in metrics.items()]


def lr_change_line(step: int, lr: float) -> str:
    return f"Update[{step}]: Change learning rate to {lr:0.5e}"


def resume_line(path: str, epoch: int, batch: int, lr: float) -> str:
    """Marker where a run continues: which checkpoint, the next epoch and batch, and the LR."""
    return f'{RESUME_PREFIX} "{path}" at Epoch[{epoch}] Batch [{batch}] with lr={lr:0.5e}'


def branch_line(epoch: int, batch: int, folder: str) -> str:
    """Marker after a resume marker that went back: where the abandoned branch's checkpoints went."""
    return (f'{BRANCH_PREFIX} Epoch[{epoch}] Batch [{batch}]: the checkpoints after it moved to "{folder}"')
