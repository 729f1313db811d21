"""Generated ImageNet-like JPEG folders for the benchmarks (about 500x375, photo-like content).

Deterministic for a seed; reused between runs when the folder already holds the images.
"""
import os

import numpy as np
import torch
import torchvision.io as tvio
import torch.nn.functional as F


def _image(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    # smooth colour fields plus noise: compresses and decodes like a photograph, unlike flat colour
    low = torch.from_numpy(rng.random((3, h // 25 + 2, w // 25 + 2), dtype=np.float32))
    img = F.interpolate(low[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    img = img + torch.from_numpy(rng.normal(0, 0.08, (3, h, w)).astype(np.float32))
    return (img.clamp(0, 1) * 255).to(torch.uint8)


def imagenet_like_folder(root: str, n: int = 2000, classes: int = 10, seed: int = 0,
                         quality: int = 90) -> str:
    """Write `n` JPEGs of about 500x375 into `root/class_XX/` (skipped if already there)."""
    marker = os.path.join(root, f".complete-{n}-{classes}-{seed}")
    if os.path.exists(marker):
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        h, w = (375, 500) if rng.random() < 0.75 else (500, 375)
        h += int(rng.integers(-30, 31))
        w += int(rng.integers(-30, 31))
        tvio.write_jpeg(_image(rng, h, w), os.path.join(folder, f"img_{i:05d}.jpg"), quality=quality)
    open(marker, "w").close()
    return root
