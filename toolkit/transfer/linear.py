"""tools/train_linear.py: logistic regression on extracted features (scikit-learn).

The features are standardised (mean 0, variance 1 per feature, from the training features), C is
chosen from a small grid by accuracy on a held-out, stratified part of the training features, and
the model with the best C is refit on all of them. On the validation features: rank-1/rank-5 and
per-class and macro precision/recall/F1 (the table tools/evaluate.py writes).
"""
import json
import os
from typing import Dict, Sequence

import numpy as np

from toolkit.errors import UserError

GRID = (0.01, 0.1, 1.0, 10.0)


def load_features(stem: str):
    """(features, labels) of OUT as tools/extract_features.py wrote it (OUT or OUT.npy)."""
    stem = stem[:-4] if stem.endswith(".npy") else stem
    for path in (stem + ".npy", stem + ".labels.npy"):
        if not os.path.exists(path):
            raise UserError(f"{path}: not found (write it with tools/extract_features.py --out {stem})")
    x, y = np.load(stem + ".npy", mmap_mode="r"), np.load(stem + ".labels.npy")
    if len(x) != len(y):
        raise UserError(f"{stem}: {len(x)} feature rows but {len(y)} labels; extract them again")
    return x, y


def _model(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))


def choose_c(x, y, grid: Sequence[float], holdout: float, seed: int) -> Dict[float, float]:
    """Held-out accuracy for each C (stratified split of the training features)."""
    from sklearn.model_selection import train_test_split
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    xa, xb, ya, yb = train_test_split(x, y, test_size=holdout, random_state=seed, stratify=stratify)
    return {c: float(_model(c, seed).fit(xa, ya).score(xb, yb)) for c in grid}


def fit_and_score(train: str, val: str, grid=GRID, holdout: float = 0.2, seed: int = 0) -> dict:
    from toolkit.engine.evaluation import per_class_table
    from toolkit.engine.meta import class_names
    xt, yt = load_features(train)
    xv, yv = load_features(val)
    if xt.shape[1] != xv.shape[1]:
        raise UserError(f"{train} has {xt.shape[1]} features per image, {val} {xv.shape[1]}: extract both "
                        "from the same layer")
    if len(np.unique(yt)) < 2:
        raise UserError(f"{train}: the training features hold one class; a classifier needs two or more")
    xt, xv = np.asarray(xt, dtype=np.float32), np.asarray(xv, dtype=np.float32)
    scores = choose_c(xt, yt, grid, holdout, seed)
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    model = _model(best, seed).fit(xt, yt)
    classes = model.classes_
    proba = model.predict_proba(xv)
    order = classes[np.argsort(-proba, 1)]
    rank1 = float(np.mean(order[:, 0] == yv))
    rank5 = float(np.mean((order[:, :5] == yv[:, None]).any(1)))
    n = int(max(yt.max(), yv.max())) + 1
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (yv, order[:, 0]), 1)
    table = per_class_table(confusion, class_names(feature_class_names(train), n))
    return {"rank1": rank1, "rank5": rank5, "C": best, "holdout_accuracy": scores, "grid_edge": _edge(best, grid),
            "macro_precision": float(table.precision.mean()), "macro_recall": float(table.recall.mean()),
            "macro_f1": float(table.f1.mean()), "train_images": len(yt), "val_images": len(yv),
            "features": int(xt.shape[1]), "table": table}


def feature_class_names(stem: str):
    """The class names tools/extract_features.py wrote into OUT.json (the dataset's classes.tsv), or None."""
    stem = stem[:-4] if stem.endswith(".npy") else stem
    try:
        with open(stem + ".json") as f:
            return json.load(f).get("class_names")
    except (OSError, ValueError):
        return None


def _edge(best: float, grid) -> str:
    """A note when the chosen C is the grid's smallest or largest: the best may lie beyond it."""
    if len(grid) < 2 or min(grid) < best < max(grid):
        return ""
    side, factor = ("smallest", 0.1) if best == min(grid) else ("largest", 10)
    return (f"C={best:g} is the grid's {side} value: the best C may lie beyond it; try --c-grid "
            f"{','.join(f'{c:g}' for c in sorted(set(grid) | {best * factor}))}")


def report(result: dict) -> str:
    grid = ", ".join(f"C={c:g}: {a:.4f}" for c, a in result["holdout_accuracy"].items())
    lines = [f"held-out accuracy per C ({grid}); chosen C={result['C']:g}, refit on all "
             f"{result['train_images']} training images ({result['features']} features)",
             f"validation ({result['val_images']} images): rank-1 {result['rank1']:.4f}, rank-5 "
             f"{result['rank5']:.4f}, macro precision {result['macro_precision']:.4f}, recall "
             f"{result['macro_recall']:.4f}, F1 {result['macro_f1']:.4f}",
             result["table"].to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    if result.get("grid_edge"):
        lines.insert(1, "note: " + result["grid_edge"])
    return "\n".join(lines)


def summary(result: dict) -> dict:
    """The --json / --json-file summary (as tools/evaluate.py's: rank1, rank5, ...)."""
    return {k: v for k, v in result.items() if k not in ("table", "holdout_accuracy")}
