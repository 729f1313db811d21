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

BACKENDS = LOADERS


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def choose_backend(backend: str, device: torch.device, ten_crop: bool = False) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--loader {backend}: valid loaders are {', '.join(BACKENDS)}")
    if backend == "dali" and not dali_available():
        raise UserError("--loader dali: nvidia-dali is not installed (pip install nvidia-dali-cuda130)")
    if backend != "auto":
        return backend
    if ten_crop or not dali_available():
        return "torch"
    # GPU: DALI decodes on the GPU (nvJPEG). CPU: tools/benchmark.py loader measured the torch
    # backend about 1.7x the DALI one on a 2-core machine (README); it is also bit-exact across a
    # stop and resume and replaces corrupt records.
    return "dali" if device.type == "cuda" else "torch"


def build_loader(data_dir, split="train", train=True, batch_size=32, image_size=224, eval_resize=None,
                 rank=0, world_size=1, seed=0, backend="auto", device=torch.device("cpu"), workers=2,
                 channels_last=False, dtype=torch.float32, ten_crop=False, color_jitter=0.0,
                 pca_lighting=0.0, min_scale=0.08, mean=None, std=None):
    """A loader over split `split` of `data_dir` for this rank (see the module docstring); mean/std
    (0-255 RGB) default to the dataset's."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    records = open_split(data_dir, split)
    info = dataset_info(data_dir)
    mean, std = tuple(mean or info.mean), tuple(std or info.std)
    chosen = choose_backend(backend, device, ten_crop)
    if chosen == "dali":
        from toolkit.data.dali_backend import DaliLoader
        if ten_crop or color_jitter or pca_lighting:
            raise UserError("ten-crop, colour jitter and PCA lighting need --loader torch")
        return DaliLoader(records, batch_size, rank, world_size, train, image_size, eval_resize, seed,
                          device, workers, mean, std, channels_last, dtype, min_scale)
    from toolkit.data.torch_backend import TorchLoader, build_transform
    batches = RankBatches(len(records), batch_size, rank, world_size, train, seed)
    transform = build_transform(train, image_size, eval_resize, ten_crop, color_jitter, min_scale)
    return TorchLoader(records, batches, transform, device, workers, mean, std,
                       channels_last, dtype, pca_lighting if train else 0.0, seed)
