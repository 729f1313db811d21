"""The names that pick checkpoints for the inference tools (PREFIX:EPOCH, PREFIX, a .pt path) and
an ensemble's check of its members. A checkpoint ready to run is toolkit/engine/model.py's
load_member; its meta is toolkit/engine/meta.py's.
"""
import os

from toolkit.engine import checkpoint
from toolkit.errors import UserError


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
