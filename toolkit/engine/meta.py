"""A checkpoint's self-description ("meta"): what a tool needs to run its model (classes,
normalisation, input geometry), stored in it by the trainer, and the checks of a dataset against it.

    describe(cfg)                  # the dict Trainer.state stores under "meta"
    meta_of(state, path)           # a checkpoint's meta; older checkpoints: from their dataset folder
    trained_config(cfg, meta)      # the run's config with the checkpoint's preprocessing
    load_trained(path)             # (state, that config, meta) of a checkpoint file
    check_class_map(meta, data, path)  # a dataset's classes.tsv against the checkpoint's names

The one rule (design.md, "one truth per fact"): every tool that runs a trained model takes its
normalisation, input size and class names from the checkpoint's meta; a dataset folder is read for
its records only (and its classes.tsv, checked against the meta's names, never used instead of them).
"""
import os
from typing import Optional

from toolkit.data.discovery import dataset_info
from toolkit.data.transforms import eval_resize_for
from toolkit.engine import checkpoint
from toolkit.engine.config import from_dict, override
from toolkit.errors import UserError
from toolkit.lists import read_classes

META_VERSION = 1
PREPROCESSING = ("decode to RGB uint8 (torchvision.io), resize the shorter side to eval_resize (bilinear, "
                 "antialiased), centre crop image_size x image_size, then (x - mean) / std per channel "
                 "with mean/std on the 0-255 scale; NCHW float32")


def class_names(names, num_classes: int) -> list:
    """classes.tsv's names, numbered beyond them for a model trained with more (--num-classes 7 on a
    dataset of 5 classes: its 5 names, then "5", "6")."""
    names = list(names or [])[:num_classes]
    return names + [str(i) for i in range(len(names), num_classes)]


def describe(cfg, info=None) -> dict:
    """The self-description of a run's checkpoints: classes, normalisation, input geometry."""
    info = info or dataset_info(cfg.data)
    num_classes = cfg.num_classes or info.num_classes
    names = class_names(info.class_names, num_classes or 0)
    return {"version": META_VERSION, "recipe": cfg.recipe, "num_classes": num_classes,
            "class_names": names, "mean": [float(v) for v in cfg.mean or info.mean],  # --mean/--std or the
            "std": [float(v) for v in cfg.std or info.std],  # source's (--init-from) win over the dataset's
            "image_size": int(cfg.image_size),
            "eval_resize": int(eval_resize_for(cfg.image_size, cfg.eval_resize)),
            "model_kwargs": {k: v for k, v in cfg.model_kwargs().items() if k != "graph"},  # in config
            "preprocessing": PREPROCESSING}


def meta_of(state: dict, path: str, data: Optional[str] = None) -> dict:
    """The checkpoint's meta; a checkpoint written before meta existed gets it from its configuration
    and its training folder (`data` only where that is gone: a --data read for records must not
    lend the model another dataset's mean/std)."""
    if "meta" in state:
        return state["meta"]
    cfg = from_dict(state["config"])
    folder = cfg.data if os.path.isdir(cfg.data) or not data else data
    if not os.path.isdir(folder):
        raise UserError(f"{path} predates self-describing checkpoints and its dataset folder {folder} "
                        "is not here: pass --data DIR (the folder it was trained on, for classes.tsv "
                        "and mean/std)")
    return describe(cfg, dataset_info(folder))


def trained_config(cfg, meta: dict):
    """`cfg` with the checkpoint's own preprocessing (normalisation, input size, eval resize), so a
    loader built from it feeds the model what it was trained on, whatever --data folder is read."""
    return override(cfg, mean=tuple(meta["mean"]), std=tuple(meta["std"]), image_size=int(meta["image_size"]),
                    eval_resize=int(meta["eval_resize"]))


def load_trained(path: str, data: Optional[str] = None):
    """(state, config with the checkpoint's preprocessing, meta) of a checkpoint file: what every tool
    that runs a trained model starts from (tools/evaluate.py, visualize.py, average.py, predict.py,
    export.py, extract_features.py)."""
    state = checkpoint.load(path)
    if "model" not in state or "config" not in state:
        raise UserError(f"{path}: not a cnn-toolkit checkpoint (no model or config in it)")
    meta = meta_of(state, path, data)
    return state, trained_config(from_dict(state["config"]), meta), meta


def _unnamed(name: str, i: int) -> bool:
    return name == str(i)  # a class the model numbers (no classes.tsv, or beyond it): any name fits


def check_class_map(meta: dict, data: str, path: str, fix: Optional[str] = None):
    """DATA/classes.tsv against the checkpoint's class names: the same class must have the same
    number in both, else one UserError ending in `fix`. A dataset without classes.tsv (made by
    MXNet's im2rec) has numbers only, checked by the label range elsewhere."""
    tsv = os.path.join(data, "classes.tsv")
    if not os.path.isfile(tsv):
        return
    names, ours = read_classes(tsv), list(meta["class_names"])
    fix = fix or ("use the dataset the model was trained on (--data), or make the lists with the "
                  "model's classes.tsv in the dataset folder (tools/im2rec.py --list)")
    if len(names) > len(ours):
        raise UserError(f"{tsv} lists {len(names)} classes, {path} was trained for {len(ours)}; {fix}")
    for i, (theirs, mine) in enumerate(zip(names, ours)):
        if theirs != mine and not _unnamed(mine, i):
            where = f"; the model's {theirs!r} is {ours.index(theirs)}" if theirs in ours else ""
            raise UserError(f"{tsv}: class {i} is {theirs!r} there but {mine!r} in {path}{where}; {fix}")
