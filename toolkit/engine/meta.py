"""A checkpoint's self-description ("meta"): what a tool needs to run its model (classes,
normalisation, input geometry), stored in it by the trainer.

    describe(cfg)                  # the dict Trainer.state stores under "meta"
    meta_of(state, path)           # a checkpoint's meta; older checkpoints: from their dataset folder
"""
import os
from typing import Optional

from toolkit.data.discovery import dataset_info
from toolkit.data.transforms import eval_resize_for
from toolkit.engine.config import from_dict
from toolkit.errors import UserError

META_VERSION = 1
PREPROCESSING = ("decode to RGB uint8 (torchvision.io), resize the shorter side to eval_resize (bilinear, "
                 "antialiased), centre crop image_size x image_size, then (x - mean) / std per channel "
                 "with mean/std on the 0-255 scale; NCHW float32")


def describe(cfg, info=None) -> dict:
    """The self-description of a run's checkpoints: classes, normalisation, input geometry."""
    info = info or dataset_info(cfg.data)
    num_classes = cfg.num_classes or info.num_classes
    names = list(info.class_names) if info.class_names and len(info.class_names) == num_classes \
        else [str(i) for i in range(num_classes or 0)]
    return {"version": META_VERSION, "recipe": cfg.recipe, "num_classes": num_classes,
            "class_names": names, "mean": [float(v) for v in cfg.mean or info.mean],  # --mean/--std or the
            "std": [float(v) for v in cfg.std or info.std],  # source's (--init-from) win over the dataset's
            "image_size": int(cfg.image_size),
            "eval_resize": int(eval_resize_for(cfg.image_size, cfg.eval_resize)),
            "model_kwargs": cfg.model_kwargs(), "preprocessing": PREPROCESSING}


def meta_of(state: dict, path: str, data: Optional[str] = None) -> dict:
    """The checkpoint's meta; a checkpoint written before meta existed gets it from its configuration
    and its dataset folder (or `data`), which must then exist."""
    if "meta" in state:
        return state["meta"]
    cfg = from_dict(state["config"])
    folder = data or cfg.data
    if not os.path.isdir(folder):
        raise UserError(f"{path} predates self-describing checkpoints and its dataset folder {folder} "
                        "is not here: pass --data DIR (the folder it was trained on, for classes.tsv "
                        "and mean/std)")
    return describe(cfg, dataset_info(folder))
