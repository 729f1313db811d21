"""Input pipelines over record shards: one loader contract, two backends (DALI and PyTorch).

    info = dataset_info(data_dir)
    loader = build_loader(data_dir, split="train", train=True, batch_size=B, rank=r, world_size=w)
    loader.set_epoch(epoch, start_batch)   # then iterate: (normalised NCHW images, int64 labels)
"""
import torch

from toolkit.data.discovery import DatasetInfo, dataset_info, open_split, split_files  # noqa: F401
from toolkit.data.sampler import RankBatches
from toolkit.cli import LOADERS
from toolkit.errors import UserError
from toolkit.rules import rule

BACKENDS = LOADERS


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def choose_backend(backend: str, device: torch.device, ten_crop: bool = False, color_jitter: float = 0.0):
    """(backend, why): the loader a run gets and the reason, for the log. `auto` takes DALI on a GPU
    when it is installed and can do what the run asks (not ten-crop, not colour jitter), torch
    otherwise; an explicit `--loader dali` that cannot is one line."""
    if backend not in BACKENDS:
        raise UserError(f"--loader {backend}: valid loaders are {', '.join(BACKENDS)}")
    names = [name for name, on in (("--ten-crop", ten_crop), ("--color-jitter", color_jitter)) if on]
    torch_only = f"{' and '.join(names)} need{'s' if len(names) == 1 else ''}" if names else ""
    if backend == "dali" and not dali_available():
        raise UserError("--loader dali: nvidia-dali is not installed (pip install nvidia-dali-cuda130)")
    if backend == "dali" and torch_only:
        raise UserError(f"--loader dali: {torch_only} --loader torch (or --loader auto)")
    if backend != "auto":
        return backend, f"--loader {backend}"
    if device.type != "cuda":
        # CPU: tools/benchmark.py loader measures the torch backend ahead of the DALI one (README);
        # it also replaces corrupt records
        return "torch", "auto: the CPU's loader"
    if not dali_available():
        return "torch", "auto: nvidia-dali is not installed"
    if torch_only:
        return "torch", f"auto: {torch_only} the torch backend"
    return "dali", "auto: GPU decode"


def build_loader(data_dir, split="train", train=True, batch_size=32, image_size=224, eval_resize=None,
                 rank=0, world_size=1, seed=0, backend="auto", device=torch.device("cpu"), workers=2,
                 channels_last=False, dtype=torch.float32, ten_crop=False, color_jitter=0.0,
                 pca_lighting=0.0, min_scale=0.08, timeout=300.0, mean=None, std=None):
    """A loader over split `split` of `data_dir` for this rank (see the module docstring); its
    `backend` names the backend and `choice` says why it was chosen. `timeout`: seconds a wait for a
    batch may last before the run ends with one line (torch backend, toolkit/data/workers.py).
    mean/std (0-255 RGB) default to the dataset's."""
    problem = rule("batch_size").problem(batch_size)
    if problem:
        raise UserError(problem)
    chosen, why = choose_backend(backend, device, ten_crop, color_jitter if train else 0.0)
    records = open_split(data_dir, split)
    info = dataset_info(data_dir)
    mean, std = tuple(mean or info.mean), tuple(std or info.std)
    # both backends read each epoch in this sampler's order (one permutation per (seed, epoch))
    batches = RankBatches(len(records), batch_size, rank, world_size, train, seed)
    if chosen == "dali":
        from toolkit.data.dali_backend import DaliLoader
        loader = DaliLoader(records, batches, image_size, eval_resize, seed, device, workers, mean,
                            std, channels_last, dtype, min_scale, pca_lighting if train else 0.0,
                            timeout=timeout, what=f"split {split!r} of {data_dir}")
    else:
        from toolkit.data.torch_backend import TorchLoader
        from toolkit.data.transforms import build_transform
        transform = build_transform(train, image_size, eval_resize, ten_crop, color_jitter, min_scale)
        loader = TorchLoader(records, batches, transform, device, workers, mean, std,
                             channels_last, dtype, pca_lighting if train else 0.0, seed, timeout,
                             f"split {split!r} of {data_dir}")
    loader.choice = f"{chosen} ({why})"
    return loader
