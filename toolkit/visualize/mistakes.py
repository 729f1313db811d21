"""Where the network fails: its most confident mistakes (with its most confident hits for contrast),
and the confusion matrix as a heatmap with class names (from tools/evaluate.py's CSV, or computed)."""
import math

import numpy as np
import pandas as pd
import torch

from toolkit.errors import UserError
from toolkit.visualize import figures
from toolkit.visualize.images import eval_views, predict


def _labels(samples, what: str) -> torch.Tensor:
    missing = [s.name for s in samples if s.label is None]
    if missing:
        raise UserError(f"{missing[0]}: no label known ({what} needs labelled images: a split, a .lst, "
                        "or class folders named as in classes.tsv)")
    return torch.tensor([s.label for s in samples])


def predictions_table(run, samples, probs: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    predicted = probs.argmax(1)
    return pd.DataFrame({
        "image": [s.name for s in samples],
        "true": [run.class_name(int(v)) for v in labels],
        "predicted": [run.class_name(int(v)) for v in predicted],
        "probability": probs.max(1).values.numpy(),
        "true_probability": probs[torch.arange(len(probs)), labels.clamp(max=probs.shape[1] - 1)].numpy(),
        "correct": (predicted == labels).numpy()})


def errors(run, samples, top: int = 8, cols: int = 8, batch_size: int = 64):
    """(figure, table of every image): the `top` most confident mistakes, then the `top` most
    confident correct answers."""
    labels = _labels(samples, "errors")
    probs = predict(run, samples, batch_size)
    table = predictions_table(run, samples, probs, labels)
    order = np.argsort(-table["probability"].to_numpy(), kind="stable")
    wrong = [i for i in order if not table["correct"][i]][:top]
    right = [i for i in order if table["correct"][i]][:top]
    n_wrong = int((~table["correct"]).sum())
    cols = max(1, min(cols, max(len(wrong), len(right), 1)))
    rows_w, rows_r = max(1, math.ceil(len(wrong) / cols)), max(1, math.ceil(len(right) / cols))
    title = (f"{run.stem}: {n_wrong} of {len(samples)} wrong. Top: the {len(wrong)} most confident "
             f"mistakes (red); below: the {len(right)} most confident correct (green)")
    fig, axes = figures.grid(rows_w + rows_r, cols, title)
    views = dict(zip(wrong + right, eval_views(run, [samples[i] for i in wrong + right]))) if wrong + right else {}
    for block, picks, start, color in (("mistakes", wrong, 0, "red"), ("correct", right, rows_w, "green")):
        if not picks:
            axes[start, 0].text(0.5, 0.5, f"no {block}", ha="center", va="center", fontsize=9)
        for k, i in enumerate(picks):
            r, c = divmod(k, cols)
            row = table.iloc[i]
            figures.show(axes[start + r, c], views[i],
                         f"true {row.true}\npred {row.predicted} {row.probability:.2f}", color)
    return fig, table


def confusion_table(counts: np.ndarray, names) -> pd.DataFrame:
    """As tools/evaluate.py writes it: rows true class, columns predicted, class names on both."""
    return pd.DataFrame(counts, index=pd.Index(list(names), name="true\\predicted"), columns=list(names))


def read_confusion_csv(path: str):
    """(counts C x C, class names) from tools/evaluate.py's ...-confusion.csv (rows: true class)."""
    try:
        df = pd.read_csv(path, index_col=0)
    except FileNotFoundError:
        raise UserError(f"{path}: confusion CSV not found (tools/evaluate.py writes LOGS/PREFIX-NNNN-"
                        "val-confusion.csv)") from None
    except Exception as e:
        raise UserError(f"{path}: not a readable CSV ({type(e).__name__}: {e})") from None
    if df.shape[0] != df.shape[1] or df.shape[0] == 0 or not all(np.issubdtype(t, np.number) for t in df.dtypes):
        raise UserError(f"{path}: expected a square table of counts with class names as header and "
                        "first column, as tools/evaluate.py writes it")
    return df.to_numpy().astype(np.int64), [str(c) for c in df.columns]


def compute_confusion(run, samples, batch_size: int = 64) -> np.ndarray:
    labels = _labels(samples, "confusion")
    probs = predict(run, samples, batch_size)
    n = len(run.class_names)
    return torch.bincount(labels * n + probs.argmax(1), minlength=n * n).view(n, n).numpy()


def confusion_figure(counts: np.ndarray, names, title: str):
    """Rows: true class, columns: predicted; colour: the share of the row (recall along the
    diagonal); counts written in the cells up to 30 classes, names on the axes up to 60."""
    n = len(counts)
    side = min(max(5.0, 0.38 * n + 2.5), 30.0)
    fig, ax = figures.plt.subplots(figsize=(side + 1.2, side), dpi=figures.DPI)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    if n <= 30:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title(f"{title}\n{total} images, accuracy {accuracy:.4f}", fontsize=9)
    fig.tight_layout()
    return fig
