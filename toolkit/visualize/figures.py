"""Figures for tools/visualize.py: grids of fixed-size cells (so a figure's pixel size is known from
its layout: CELL_W x CELL_H pixels a cell), heatmaps over images, written atomically as PNG, with a
CSV beside where there are numbers."""
import math
import os
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from toolkit.atomic import atomic_open, atomic_path  # noqa: E402
from toolkit.errors import UserError  # noqa: E402

DPI = 100
CELL_W, CELL_H = 1.8, 2.1     # inches: the image, and room for two lines of title above it
HEAT_CMAP = "jet"


def grid(rows: int, cols: int, title: str = ""):
    """(figure, axes rows x cols, all off) of rows x cols cells; the size is exactly
    (cols * CELL_W * DPI, rows * CELL_H * DPI) pixels."""
    fig, axes = plt.subplots(rows, cols, figsize=(cols * CELL_W, rows * CELL_H), dpi=DPI, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    height = rows * CELL_H
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 0.62 / height,
                        wspace=0.06, hspace=0.32)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 / height, va="top")
    return fig, axes


def layout(n: int, cols: int):
    """(rows, cols) for n cells at most `cols` wide."""
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 CHW (RGB, or one channel) -> what imshow takes."""
    a = image.detach().cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def show(ax, image: torch.Tensor, title: str = "", color: str = "black"):
    ax.imshow(hwc(image), interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=7, color=color)


def show_heat(ax, image: torch.Tensor, heat: torch.Tensor, title: str = "", alpha: float = 0.5,
              vmax: Optional[float] = None):
    """The image with a heatmap over its pixels (heat: H x W, the image's size, any scale; shown
    from 0 to `vmax`, default its own maximum)."""
    show(ax, image, title)
    h = heat.detach().float().cpu().numpy()
    ax.imshow(h, cmap=HEAT_CMAP, alpha=alpha, vmin=0, vmax=max(float(h.max()) if vmax is None else vmax, 1e-12),
              interpolation="bilinear")


def outline(ax, mask: torch.Tensor, color: str = "white"):
    """The outline of a boolean mask (a toy shape's box) over a cell."""
    m = mask.detach().float().cpu().numpy()
    if m.any() and not m.all():
        ax.contour(m, levels=[0.5], colors=color, linewidths=0.8)


def show_map(ax, values: torch.Tensor, title: str = "", cmap: str = "viridis"):
    """A 2-D map (a feature map, a kernel) scaled to its own range."""
    ax.imshow(values.detach().float().cpu().numpy(), cmap=cmap, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=7)


def save(fig, out: str) -> str:
    """Write the figure as PNG to `out` atomically (no tight bbox: the size stays the layout's)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    except OSError as e:
        raise UserError(f"{out}: cannot write the figure: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def csv_beside(out_png: str) -> str:
    return os.path.splitext(out_png)[0] + ".csv"


def write_csv(df: pd.DataFrame, path: str, index: bool = False) -> str:
    try:
        with atomic_open(path, "w", newline="") as f:
            df.to_csv(f, index=index, float_format="%.6f")
    except OSError as e:
        raise UserError(f"{path}: cannot write the CSV: {e.strerror or e}") from None
    return path


def short(name: str, width: int = 24) -> str:
    """A file name short enough for a cell's title."""
    name = os.path.basename(name) or name
    return name if len(name) <= width else "..." + name[-(width - 3):]
