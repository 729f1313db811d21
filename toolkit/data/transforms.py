"""The torch backend's per-image transforms, in uint8: training's random-resized crop (only the
crop's region decoded), flip and colour jitter, evaluation's resize and centre (or ten) crop, and
AlexNet's PCA lighting (applied per batch by the loader). Every draw comes from a generator seeded by
(seed, epoch, position) (toolkit/data/sampler.py). DALI's pipeline follows the same geometry
(toolkit/data/dali_backend.py).
"""
import math

import cv2
import numpy as np
import torch
import torchvision.transforms.v2 as T

from toolkit import imageops
from toolkit.data.decode import decode, decode_crop

# AlexNet's PCA lighting (Krizhevsky et al. 2012 §4.1): ImageNet RGB eigenvalues / eigenvectors
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045]) * 255
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]])


def eval_resize_for(image_size: int, eval_resize) -> int:
    """256 -> 224 by default, proportional for other sizes."""
    return eval_resize or int(round(image_size * 256 / 224))


def build_transform(train: bool, image_size: int, eval_resize=None, ten_crop=False, color_jitter=0.0,
                    min_scale=0.08):
    """A callable (JPEG bytes, seed, out=None) -> uint8 image of its `.shape`, written into `out`
    (a slot of the batch) when given."""
    if train:
        return TrainTransform(image_size, min_scale, color_jitter)
    crop = T.TenCrop(image_size) if ten_crop else T.CenterCrop(image_size)
    resize = T.Resize(eval_resize_for(image_size, eval_resize), antialias=True)
    return EvalTransform(T.Compose([resize, crop]), (10, 3) if ten_crop else (3,), image_size)


class EvalTransform:
    """torchvision's Resize (shorter side) + CenterCrop or TenCrop: the reference's evaluation."""

    def __init__(self, transform, lead, size):
        self.transform, self.shape = transform, (*lead, size, size)

    def __call__(self, payload: bytes, seed: int, out: torch.Tensor = None):
        img = self.transform(decode(payload))
        img = torch.stack(list(img)) if isinstance(img, (tuple, list)) else img  # ten-crop
        return img if out is None else out.copy_(img)


class TrainTransform:
    """RandomResizedCrop (torchvision's algorithm and ranges) and a horizontal flip, in uint8.

    Hand-written rather than torchvision.transforms.v2.RandomResizedCrop because v2 draws from
    torch's global RNG: making that per-sample deterministic costs a fork_rng and a reseed per image,
    about a third of the crop's time (tools/benchmark.py loader). Here the draws come from a
    generator seeded by (seed, epoch, position). Only the crop's region is decoded; the resize is
    OpenCV's (toolkit/imageops.py).
    """

    def __init__(self, size: int, min_scale: float = 0.08, color_jitter: float = 0.0,
                 ratio=(3 / 4, 4 / 3)):
        self.size, self.scale = size, (min_scale, 1.0)
        self.ratio, self.log_ratio = ratio, (math.log(ratio[0]), math.log(ratio[1]))
        self.jitter = T.ColorJitter(color_jitter, color_jitter, color_jitter) if color_jitter else None
        self.shape = (3, size, size)
        self._hwc = None  # this process's resize buffer

    def crop_box(self, height: int, width: int, g: torch.Generator):
        """torchvision RandomResizedCrop.get_params, drawing from `g`: (top, left, h, w)."""
        area = height * width
        for a, r, u, v in torch.rand(10, 4, generator=g).tolist():
            target = area * (self.scale[0] + a * (self.scale[1] - self.scale[0]))
            aspect = math.exp(self.log_ratio[0] + r * (self.log_ratio[1] - self.log_ratio[0]))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(u * (height - h + 1)), int(v * (width - w + 1)), h, w
        in_ratio = width / height  # fallback: the central crop closest to the ratio range
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, payload: bytes, seed: int, out: torch.Tensor = None) -> torch.Tensor:
        """uint8 CHW (size x size), written into `out` (a slot of the batch) when given."""
        g = torch.Generator().manual_seed(seed)
        crop = decode_crop(payload, lambda height, width: self.crop_box(height, width, g))
        hwc = crop.permute(1, 2, 0).numpy()  # decode_crop's memory is HWC: no copy
        if torch.rand(1, generator=g).item() < 0.5:
            hwc = cv2.flip(hwc, 1)
        if self._hwc is None:
            self._hwc = np.empty((self.size, self.size, 3), np.uint8)
        imageops.resize(hwc, self.size, self.size, self._hwc)
        out = torch.empty(self.shape, dtype=torch.uint8) if out is None else out
        if self.jitter is not None:  # v2 ColorJitter draws from the global RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out.copy_(self.jitter(torch.from_numpy(self._hwc).permute(2, 0, 1)))
        else:  # HWC -> CHW while the image is in cache: the batch then normalises in one pass
            planes = list(out.numpy())
            if cv2.split(self._hwc, planes)[0] is not planes[0]:  # OpenCV wrote elsewhere
                np.copyto(out.numpy(), self._hwc.transpose(2, 0, 1))
        return out


def lighting_shift(std: float, g: torch.Generator) -> torch.Tensor:
    """AlexNet's PCA lighting: the RGB shift added to every pixel (both backends draw it here)."""
    alpha = torch.randn(3, generator=g) * std
    return _EIGVEC @ (alpha * _EIGVAL)


def pca_lighting(img: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    shift = lighting_shift(std, g)
    return (img.float() + shift[:, None, None]).clamp_(0, 255).to(torch.uint8)
