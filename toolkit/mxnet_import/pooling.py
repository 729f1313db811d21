"""MXNet's Pooling (src/operator/nn/pool.h) exactly, whatever its convention and padding.

Output size per spatial axis (input x, kernel k, stride s, pad p):
    'valid': 1 + floor((x + 2p - k) / s)      'full': 1 + ceil((x + 2p - k) / s)
('same' exists in MXNet for 1-D max pooling only, so never in an image network.)
PyTorch's ceil_mode drops a last window that starts in the right padding and refuses p > k / 2;
MXNet does neither, so the input is padded here to the exact extent the windows cover (the lowest float for max,
zeros for avg/sum) and pooled without padding. An average divides by the window's cells inside
[-p, x + p) (count_include_pad, MXNet's default) or inside [0, x).
"""
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.mxnet_import.attrs import tup, value


def axis_geometry(x: int, k: int, s: int, p: int, convention: str) -> Tuple[int, int, int]:
    """(output size, padding before, padding after) of one axis."""
    span = x + 2 * p - k
    out = 1 + (-(-span // s) if convention == "full" else span // s)
    return out, p, (out - 1) * s + k - x - p


def counts(x: int, k: int, s: int, p: int, out: int, include_pad: bool) -> List[int]:
    lo, hi = (-p, x + p) if include_pad else (0, x)
    return [min(i * s - p + k, hi) - max(i * s - p, lo) for i in range(out)]


class Pool(nn.Module):
    def __init__(self, attrs):
        super().__init__()
        self.kind = value(attrs, "pool_type", "max")
        if self.kind not in ("max", "avg", "sum"):
            raise ValueError(f"Pooling pool_type {self.kind} is not taken (max, avg, sum)")
        self.global_pool = bool(value(attrs, "global_pool", False))
        self.kernel = tup(attrs, "kernel", 1)
        self.stride = tup(attrs, "stride", 1)
        self.pad = tup(attrs, "pad", 0)
        self.convention = value(attrs, "pooling_convention", "valid")
        self.include_pad = bool(value(attrs, "count_include_pad", True))
        if len(self.kernel) != 2 and not self.global_pool:
            raise ValueError(f"only 2-D pooling is taken (kernel {self.kernel})")
        if self.convention not in ("valid", "full"):
            raise ValueError(f"Pooling pooling_convention {self.convention} is not taken (valid, full)")

    def extra_repr(self):
        return (f"{self.kind}, global" if self.global_pool else
                f"{self.kind}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}, {self.convention}")

    def forward(self, x):
        if self.global_pool:
            dims = tuple(range(2, x.dim()))
            if self.kind == "max":
                return x.amax(dim=dims, keepdim=True)
            return x.mean(dim=dims, keepdim=True) if self.kind == "avg" else x.sum(dim=dims, keepdim=True)
        (h, w), (kh, kw), (sh, sw), (ph, pw) = x.shape[2:], self.kernel, self.stride, self.pad
        oh, top, bottom = axis_geometry(h, kh, sh, ph, self.convention)
        ow, left, right = axis_geometry(w, kw, sw, pw, self.convention)
        fill = torch.finfo(x.dtype).min if self.kind == "max" else 0.0  # MXNet's value of an empty window
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=fill)
        if self.kind == "max":
            return F.max_pool2d(x, (kh, kw), (sh, sw))
        out = F.avg_pool2d(x, (kh, kw), (sh, sw))
        ch = counts(h, kh, sh, top, oh, self.include_pad)
        cw = counts(w, kw, sw, left, ow, self.include_pad)
        full = kh * kw
        if self.kind == "sum":
            return out * full
        if all(c == kh for c in ch) and all(c == kw for c in cw):
            return out
        scale = torch.tensor([[full / (a * b) for b in cw] for a in ch], dtype=out.dtype, device=out.device)
        return out * scale
