"""A checkpoint ready to run: its eval-mode network (toolkit/engine/model.py) and its meta
(toolkit/engine/meta.py), and the names that pick checkpoints.

    load_member(path)              # (model in eval mode, meta, config) of one checkpoint
"""
import dataclasses
import os
from typing import Optional

import torch

from toolkit.engine import checkpoint
from toolkit.engine.config import from_dict
from toolkit.engine.meta import meta_of
from toolkit.engine.model import build_eval_model
from toolkit.errors import UserError

@dataclasses.dataclass
class Member:
    """One checkpoint ready to run: eval-mode model, its meta and configuration."""
    path: str
    model: torch.nn.Module
    meta: dict
    cfg: object


def load_member(path: str, data: Optional[str] = None) -> Member:
    state = checkpoint.load(path)
    if "model" not in state or "config" not in state:
        raise UserError(f"{path}: not a cnn-toolkit checkpoint (no model or config in it)")
    cfg = from_dict(state["config"])
    return Member(path, build_eval_model(cfg, state), meta_of(state, path, data), cfg)


def resolve(spec: str, checkpoints_dir: str = "checkpoints") -> str:
    """A member spec: PREFIX:EPOCH, PREFIX (its newest checkpoint) or a path to a .pt file."""
    if spec.endswith(".pt") or os.path.sep in spec and os.path.isfile(spec):
        if not os.path.isfile(spec):
            raise UserError(f"{spec}: checkpoint not found")
        return spec
    prefix, sep, epoch = spec.rpartition(":")
    if not sep:
        return checkpoint.find(checkpoints_dir, spec, None)
    if not epoch.isdigit() or not prefix:
        raise UserError(f"{spec!r}: a model is PREFIX:EPOCH (e.g. resnet18:30), PREFIX or a .pt path")
    return checkpoint.find(checkpoints_dir, prefix, int(epoch))


def check_same_classes(members):
    """Members of an ensemble must share their classes (count and, where known, names)."""
    first = members[0]
    for m in members[1:]:
        if m.meta["num_classes"] != first.meta["num_classes"] or m.meta["class_names"] != first.meta["class_names"]:
            raise UserError(f"{m.path} has {m.meta['num_classes']} classes ({', '.join(m.meta['class_names'][:3])}, "
                            f"...), {first.path} {first.meta['num_classes']} ({', '.join(first.meta['class_names'][:3])}, "
                            "...): an ensemble needs models trained on the same classes")
