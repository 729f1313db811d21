"""What the training augmentation does: the run's training transform (the torch loader's own
TrainTransform: random resized crop with its scale, flip, colour jitter; then PCA lighting where the
run has it), drawn for several epochs with the seeds the loader uses for that image in that epoch,
beside the eval view. (The DALI loader draws the same kinds of crops from its own generator.)"""
import numpy as np
import torch

from toolkit.data import open_split
from toolkit.data.sampler import LIGHTING, RankBatches, sample_seed
from toolkit.data.transforms import build_transform, pca_lighting
from toolkit.visualize import figures
from toolkit.visualize.images import eval_views


def _positions(run, split: str, epochs: int):
    """{epoch: position of each record in that epoch's training order}, as RankBatches orders it."""
    n = len(open_split(run.data, split))
    out = {}
    for e in range(epochs):
        batches = RankBatches(n, 1, 0, 1, True, run.cfg.seed)
        batches.set_epoch(e)
        inverse = np.empty(n, dtype=np.int64)
        inverse[batches.order()] = np.arange(n)
        out[e] = inverse
    return out


def draws(run, samples, epochs: int, split: str) -> torch.Tensor:
    """uint8 N x epochs x 3 x S x S: each sample as the training loader gives it in epochs 0..E-1
    (records of the training split at their position in each epoch; other images at position k)."""
    cfg = run.cfg
    transform = build_transform(True, cfg.image_size, cfg.eval_resize, False, cfg.color_jitter, cfg.min_crop_scale)
    positions = _positions(run, split, epochs) if any(s.record is not None for s in samples) else {}
    eval_views(run, samples)  # an image that does not decode: one line, before any drawing
    out = torch.empty(len(samples), epochs, *transform.shape, dtype=torch.uint8)
    for k, s in enumerate(samples):
        for e in range(epochs):
            position = int(positions[e][s.record]) if s.record is not None else k
            transform(s.payload, sample_seed(cfg.seed, e, position), out[k, e])
            if cfg.pca_lighting:
                g = torch.Generator().manual_seed(sample_seed(cfg.seed, e, position, LIGHTING))
                out[k, e].copy_(pca_lighting(out[k, e], cfg.pca_lighting, g))
    return out


def augment(run, samples, epochs: int = 7, split: str = "train"):
    """A figure: one row per image, its eval view then its training draws in epochs 0..E-1."""
    images = draws(run, samples, epochs, split)
    views = eval_views(run, samples)
    cfg = run.cfg
    extra = (f", colour jitter {cfg.color_jitter}" if cfg.color_jitter else "") + \
        (f", PCA lighting {cfg.pca_lighting}" if cfg.pca_lighting else "")
    fig, axes = figures.grid(len(samples), epochs + 1,
                             f"{run.stem}: training augmentation (random resized crop, scale "
                             f"{cfg.min_crop_scale}-1, flip{extra}; seed {cfg.seed})")
    for k, s in enumerate(samples):
        figures.show(axes[k, 0], views[k], f"{figures.short(s.name)}\neval view")
        for e in range(epochs):
            figures.show(axes[k, e + 1], images[k, e], f"\nepoch {e}")
    return fig
