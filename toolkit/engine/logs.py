"""Logging in MXNet's text format (toolkit/mxlog.py) on rank 0, to LOGS/PREFIX.log and the console,
and the metric accumulators behind the Speedometer and Train-/Validation- lines."""
import logging
import os
import platform
import sys

import torch

from toolkit import __version__

LOGGER = "toolkit"


def setup_logging(log_path: str, main: bool) -> logging.Logger:
    log = logging.getLogger(LOGGER)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(console)
    if main:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        file_handler = logging.FileHandler(log_path, mode="a")  # appended on resume
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)
    return log


def header_lines(cfg, env, backend: str, model_params: int):
    import torchvision
    devices = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else platform.processor() or "cpu"
    return [f"cnn-toolkit {__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"python {platform.python_version()}",
            f"world size {env.world}, device {env.device} ({devices}), loader {backend}, "
            f"model {cfg.recipe} with {model_params:,d} parameters",
            f"config {cfg.to_json()}"]


class Meter:
    """Sums of loss, top-1/top-5 hits and samples, kept on the device (no sync per batch)."""

    def __init__(self, device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    @staticmethod
    def batch_sums(logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
        """[loss sum, top-1 hits, top-5 hits, samples] of one batch, on its device."""
        k = min(5, logits.shape[1])
        hit = logits.detach().topk(k, 1).indices.eq(labels[:, None])
        return torch.stack([loss_sum.detach().double(), hit[:, 0].sum().double(), hit.any(1).sum().double(),
                            torch.tensor(float(len(labels)), device=labels.device, dtype=torch.float64)])

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor):
        self.sums += self.batch_sums(logits, labels, loss_sum)

    def metrics(self, sums=None) -> dict:
        loss, top1, top5, n = (sums if sums is not None else self.sums).tolist()
        n = max(n, 1.0)
        return {"accuracy": top1 / n, "top_k_accuracy_5": top5 / n, "cross-entropy": loss / n}
