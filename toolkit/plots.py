"""One PNG per run from a parsed log (toolkit.logparse): accuracy and loss per epoch, with the
points where the run was resumed and where the learning rate changed.

Epoch e's figures are drawn at x = e + 1 (epochs trained when they were measured), so a resume
at Epoch[2] and an LR change at the start of epoch 30 sit at x = 2 and x = 30, between the points
they separate.
"""
import math
import os
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (and none on a training node)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from toolkit.atomic import atomic_path  # noqa: E402
from toolkit.errors import UserError  # noqa: E402

LOSSES = ("cross-entropy", "nll-loss", "loss", "ce")  # first one found is drawn
COLORS = {"train": "tab:blue", "val": "tab:orange"}


def _curve(ax, df, col: str, x, **style):
    if col in df and df[col].notna().any():
        ax.plot(x, df[col].to_numpy(), marker="o", markersize=3, **style)


def _markers(ax, parsed):
    """Dotted verticals: resumes (grey) and LR changes (green), one legend entry each."""
    for i, r in enumerate(parsed.resumes):  # wide and pale: an LR change at the same epoch shows on top
        ax.axvline(r.epoch, color="0.5", linestyle=":", linewidth=3, alpha=0.7,
                   label=None if i else "resumed")
    for i, x in enumerate(parsed.lr_changes):
        ax.axvline(x, color="tab:green", linestyle=":", linewidth=1.4, label=None if i else "LR change")


def _accuracy(ax, parsed, x):
    df = parsed.epochs
    for split in ("train", "val"):
        _curve(ax, df, f"{split}-accuracy", x, color=COLORS[split], linestyle="-",
               label=f"{split} top-1")
        _curve(ax, df, f"{split}-top_k_accuracy_5", x, color=COLORS[split], linestyle="--",
               label=f"{split} top-5")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy (top-1 solid, top-5 dashed)", fontsize=10)


def _loss(ax, parsed, x):
    df = parsed.epochs
    name = next((n for n in LOSSES if f"train-{n}" in df or f"val-{n}" in df), None)
    for split in ("train", "val") if name else ():
        _curve(ax, df, f"{split}-{name}", x, color=COLORS[split], linestyle="-", label=f"{split} {name}")
    values = df[[c for c in (f"train-{name}", f"val-{name}") if c in df]].to_numpy().ravel() if name else []
    values = values[(values > 0) & (values == values)] if len(values) else values
    if len(values) and values.max() > 20 * values.min():  # an early spike would flatten the rest
        ax.set_yscale("log")
    ax.set_ylabel(name or "loss")
    ax.set_title(f"loss ({name or 'not logged'})", fontsize=10)


def _save(fig, out_png: str):
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png")
    except OSError as e:
        raise UserError(f"{out_png}: cannot write the plot: {e.strerror or e}") from None


def plot_run(parsed, out_png: str, title: Optional[str] = None) -> str:
    """Write the two-panel PNG to `out_png` (atomically); return the path."""
    x = parsed.epochs.index.to_numpy() + 1
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    try:
        _accuracy(acc, parsed, x)
        _loss(loss, parsed, x)
        last = max([int(x.max()) if len(x) else 1] + [r.epoch for r in parsed.resumes] +
                   [math.ceil(v) for v in parsed.lr_changes])
        for ax in (acc, loss):
            _markers(ax, parsed)
            ax.set_xlabel("epochs trained")
            ax.set_xlim(0, last + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
        fig.suptitle(title or ", ".join(map(os.path.basename, parsed.files)), fontsize=11)
        fig.tight_layout()
        _save(fig, out_png)
    finally:
        plt.close(fig)
    return out_png


def plot_validation(curves: dict, out_png: str, title: str = "validation") -> str:
    """The validation curves of several runs in one PNG (tools/runs.py --plot): top-1 (solid) and
    top-5 (dashed) accuracy, and the loss, per epoch; one colour per run. `curves`: {name: the
    per-epoch table of toolkit.logparse}."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    try:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (name, df) in enumerate(curves.items()):
            x, color = df.index.to_numpy() + 1, colors[i % len(colors)]
            _curve(acc, df, "val-accuracy", x, color=color, linestyle="-", label=name)
            _curve(acc, df, "val-top_k_accuracy_5", x, color=color, linestyle="--")
            lname = next((n for n in LOSSES if f"val-{n}" in df), None)
            if lname:
                _curve(loss, df, f"val-{lname}", x, color=color, linestyle="-", label=name)
        values = [v for line in loss.get_lines() for v in line.get_ydata() if v > 0]
        if values and max(values) > 20 * min(values):  # one diverging run would flatten the others
            loss.set_yscale("log")
        acc.set_ylim(0, 1.02)
        acc.set_title("validation accuracy (top-1 solid, top-5 dashed)", fontsize=10)
        loss.set_title("validation loss", fontsize=10)
        for ax, label in ((acc, "accuracy"), (loss, "loss")):
            ax.set_xlabel("epochs trained")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        handles, labels = acc.get_legend_handles_labels()
        rows = -(-len(labels) // 3)  # one legend for both panels, 3 runs a row, below them
        if labels:
            fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(3, len(labels)), frameon=False)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout(rect=(0, min(0.05 * rows, 0.5), 1, 1))
        _save(fig, out_png)
    finally:
        plt.close(fig)
    return out_png
