"""Generated ImageNet-like JPEG folders for the benchmarks (about 500x375, photo-like content).

Deterministic for a seed; reused between runs when the folder already holds the images.
"""
import multiprocessing as mp
import os

import numpy as np
import torch
import torchvision.io as tvio
import torch.nn.functional as F


def _image(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    """Photo-like content: smooth colour fields, a few hard-edged objects, mild sensor noise."""
    low = torch.from_numpy(rng.random((3, h // 40 + 2, w // 40 + 2), dtype=np.float32))
    img = F.interpolate(low[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    for _ in range(int(rng.integers(3, 8))):
        y0, x0 = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        y1, x1 = y0 + int(rng.integers(10, h // 2)), x0 + int(rng.integers(10, w // 2))
        img[:, y0:y1, x0:x1] = torch.from_numpy(rng.random((3, 1, 1), dtype=np.float32))
    img = img + torch.from_numpy(rng.normal(0, 0.03, (3, h, w)).astype(np.float32))
    return (img.clamp(0, 1) * 255).to(torch.uint8)


def _write_one(args):
    root, i, classes, seed, quality = args
    torch.set_num_threads(1)
    rng = np.random.default_rng([seed, i])  # per image: the same files whatever the process count
    h, w = (375, 500) if rng.random() < 0.75 else (500, 375)
    h, w = h + int(rng.integers(-30, 31)), w + int(rng.integers(-30, 31))
    path = os.path.join(root, f"class_{i % classes:02d}", f"img_{i:05d}.jpg")
    tvio.write_jpeg(_image(rng, h, w), path, quality=quality)


def imagenet_like_folder(root: str, n: int = 2000, classes: int = 10, seed: int = 0,
                         quality: int = 90) -> str:
    """Write `n` JPEGs of about 500x375 into `root/class_XX/` (skipped if already there)."""
    marker = os.path.join(root, f".complete-v2-{n}-{classes}-{seed}")
    if os.path.exists(marker):
        return root
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c:02d}"), exist_ok=True)
    print(f"generating {n} ImageNet-like JPEGs in {root} (once)", flush=True)
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_write_one, [(root, i, classes, seed, quality) for i in range(n)], chunksize=16)
    open(marker, "w").close()
    return root
