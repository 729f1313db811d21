"""Fine-tuning schedule: a frozen body, BatchNorm statistics included, while a new head warms up.

The head is every tensor whose shape depends on the number of classes (the classifier; GoogLeNet's
auxiliary classifiers too), found by building the recipe on the meta device with one class more:
the trainer never asks which model it is training. `--freeze-epochs N`: for epochs < N only the
head learns. `--freeze-until LAYER`: the layers up to LAYER (a module name, as
`tools/extract_features.py --list-layers` prints them) stay frozen for the whole run. Frozen
parameters have requires_grad False (no gradient is computed for them, and the optimizer skips
them: no weight decay, no momentum) and frozen BatchNorm layers run in eval mode (their running
statistics neither used from the batch nor updated). The state is a function of the epoch, so a
resumed run freezes exactly as an uninterrupted one.
"""
from typing import List, Set

import torch
import torch.nn as nn

from toolkit.errors import UserError
from toolkit.registry import build_model


def head_keys(recipe: str, model_kwargs: dict, model: nn.Module) -> List[str]:
    """State-dict keys of `model` whose shape changes with the number of classes."""
    ours = model.state_dict()
    classes = (model_kwargs.get("num_classes") or _out_features(model)) + 1
    with torch.device("meta"):
        other = build_model(recipe, **{**model_kwargs, "num_classes": classes}).state_dict()
    head = [k for k, v in ours.items() if k in other and tuple(other[k].shape) != tuple(v.shape)]
    if ours.keys() != other.keys() or (head and head[0] == next(iter(ours))):
        raise ValueError(f"{recipe}: the model options {model_kwargs} do not describe this model")
    return head


def _out_features(model: nn.Module) -> int:
    out = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    return out.out_features if isinstance(out, nn.Linear) else out.out_channels


def head_module(model: nn.Module, head: List[str]) -> str:
    """The main classifier's module name: the owner of the last head tensor."""
    return head[-1].rsplit(".", 1)[0] if head else ""


def layer_names(model: nn.Module) -> List[str]:
    return [name for name, _ in model.named_modules() if name]


def keys_up_to(model: nn.Module, layer: str) -> Set[str]:
    """The state-dict keys registered before LAYER's last one, LAYER's own included."""
    names = layer_names(model)
    if layer not in names:
        top = [n for n in names if "." not in n]
        raise UserError(f"--freeze-until {layer}: no such layer in this model; top-level layers: "
                        f"{', '.join(top)} (all of them: tools/extract_features.py --list-layers)")
    keys = list(model.state_dict())
    inside = [i for i, k in enumerate(keys) if k.startswith(layer + ".")]
    if not inside:
        raise UserError(f"--freeze-until {layer}: that layer has no parameters; choose one that has "
                        "(tools/extract_features.py --list-layers)")
    return set(keys[:inside[-1] + 1])


class Freezer:
    """Which parameters learn in which epoch; `apply(model, epoch)` at the start of each epoch (after
    model.train()). Returns True when the set of learning parameters changed (DDP must be rebuilt)."""

    def __init__(self, model: nn.Module, head: List[str], freeze_epochs: int = 0, freeze_until: str = ""):
        self.head, self.freeze_epochs = set(head), freeze_epochs
        keys = list(model.state_dict())
        self.always = keys_up_to(model, freeze_until) if freeze_until else set()
        if self.always & self.head:
            raise UserError(f"--freeze-until {freeze_until}: that includes the classifier, so nothing "
                            "would learn; choose a layer before it")
        if freeze_epochs and not self.head:
            raise UserError("--freeze-epochs: this model has no classifier tensors to train alone")
        self.body = {k for k in keys if k not in self.head}
        self.current = None

    def frozen(self, epoch: int) -> Set[str]:
        return self.body if epoch < self.freeze_epochs else self.always

    @property
    def active(self) -> bool:
        return bool(self.freeze_epochs or self.always)

    def apply(self, model: nn.Module, epoch: int) -> bool:
        frozen = self.frozen(epoch)
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.running_mean" in frozen:
                m.eval()
        changed, self.current = self.current is not None and frozen != self.current, frozen
        return changed

    def describe(self, epoch: int, model: nn.Module) -> str:
        frozen = self.frozen(epoch)
        n_frozen = sum(p.numel() for k, p in model.named_parameters() if k in frozen)
        total = sum(p.numel() for p in model.parameters())
        return f"{n_frozen:,d} of {total:,d} parameters frozen"
