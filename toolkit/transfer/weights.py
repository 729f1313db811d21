"""`--init-from SOURCE`: start a run from pretrained weights.

SOURCE is one of our checkpoints (PREFIX-NNNN.pt, of any recipe with the same body), a state_dict
file (torchvision's, as torch hub caches them, e.g. resnet50-0676ba61.pth; DDP's `module.` and
torch.compile's `_orig_mod.` prefixes are stripped), or `torchvision:NAME` (a model name for its
DEFAULT weights, or a weights name such as ResNet50_Weights.IMAGENET1K_V2), read from torch hub's
cache. torchvision's layouts are renamed to ours (toolkit/transfer/keymaps.py). The head (the
tensors whose shape depends on the number of classes) is kept when its shape fits, else left as
built (new, for the dataset's classes); any other tensor that does not fit refuses the source in
one line naming it.
"""
import dataclasses
import os
import socket
from typing import Dict, List, Optional, Tuple

import torch

from toolkit.data.discovery import IMAGENET_MEAN, IMAGENET_STD
from toolkit.errors import UserError
from toolkit.transfer.keymaps import TORCHVISION_HOME, torchvision_map

PREFIXES = ("module.", "_orig_mod.")
DOWNLOAD_TIMEOUT = 60  # seconds without data before a download of torchvision's weights gives up
SOURCES = "our checkpoint PREFIX-NNNN.pt, a torchvision .pth state_dict file, or torchvision:NAME"


@dataclasses.dataclass
class Source:
    text: str                      # as given
    kind: str                      # "checkpoint" | "torchvision" | "state_dict"
    state: Dict[str, torch.Tensor]
    config: Optional[dict] = None  # our checkpoint's configuration
    meta: Optional[dict] = None    # our checkpoint's meta (its normalisation, input size, class names)


def torchvision_weights(name: str):
    """torchvision's weights enum for `resnet50` (its DEFAULT) or `ResNet50_Weights.IMAGENET1K_V2`."""
    import torchvision.models as tvm
    try:
        return tvm.get_weight(name) if "." in name else tvm.get_model_weights(name).DEFAULT
    except (KeyError, ValueError, AttributeError):
        raise UserError(f"--init-from torchvision:{name}: torchvision has no such model or weights; "
                        "e.g. torchvision:resnet50 or torchvision:ResNet50_Weights.IMAGENET1K_V2") from None


def torchvision_file(name: str, download: bool = True) -> str:
    """The cached file of torchvision:NAME (torch hub's cache), downloaded if possible."""
    weights = torchvision_weights(name)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(weights.url))
    if os.path.exists(path):
        return path
    reason = "not downloaded by this process"
    if download:
        previous = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, path, progress=False)  # temp file, renamed
            return path
        except Exception as exc:  # no network, a proxy, DNS: say what to fetch and where to put it
            reason = f"could not download it: {type(exc).__name__}"
        finally:
            socket.setdefaulttimeout(previous)
    raise UserError(f"--init-from torchvision:{name}: {os.path.basename(path)} is not in torch hub's cache "
                    f"({reason}); download {weights.url} and put it in {folder}/ "
                    "(or pass the file's path to --init-from)")


def strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Without DDP's `module.` and torch.compile's `_orig_mod.` (nested in either order)."""
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def read_source(text: str, download: bool = True) -> Source:
    """Read SOURCE (see the module docstring); one line for a path or name that is not one."""
    if text.startswith("torchvision:"):
        path, kind = torchvision_file(text.split(":", 1)[1], download), "torchvision"
    else:
        path, kind = text, None
    if not os.path.isfile(path):
        raise UserError(f"--init-from {text}: no such file; SOURCE is {SOURCES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--init-from {text}: not a readable checkpoint or state_dict "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj:
        return Source(text, "checkpoint", strip_prefixes(obj["model"]), obj["config"], obj.get("meta"))
    for key in ("state_dict", "model"):  # other trainers' checkpoints: the weights under one key
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"--init-from {text}: holds no state_dict (a dict of tensors); SOURCE is {SOURCES}")
    return Source(text, kind or "state_dict", strip_prefixes(obj))


def _fits(state: Dict, ours: Dict) -> int:
    return sum(1 for k, v in state.items() if k in ours and tuple(v.shape) == tuple(ours[k].shape))


def to_our_layout(source: Source, recipe: str, ours: Dict) -> Tuple[Dict, Dict[str, str], str]:
    """(state under our names, {our name: the source's name}, layout) where layout is 'ours' or
    "torchvision's": whichever puts more of the source's tensors in place."""
    same = {k: k for k in source.state}
    fn = torchvision_map(recipe) if source.kind != "checkpoint" else None
    mapped = fn(source.state, ours) if fn else {}
    renamed = {mapped[k]: v for k, v in source.state.items() if k in mapped}
    if fn and _fits(renamed, ours) > _fits(source.state, ours):
        return renamed, {v: k for k, v in mapped.items()}, "torchvision's"
    return dict(source.state), same, "ours"


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _names(keys: List[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _mismatch(source: Source, recipe: str, key: str, theirs: Optional[str], state: Dict, ours: Dict) -> str:
    what = (f"{key} is {_shape(ours[key])} here but {_shape(state[key])} in the source ({theirs})"
            if theirs else f"{key} ({_shape(ours[key])}) is not in the source")
    hint = ""
    cfg = source.config or {}
    if cfg.get("recipe") and cfg["recipe"] != recipe:
        hint = f"; the source is a {cfg['recipe']} checkpoint"
    elif cfg:
        from toolkit.cli import MODEL_KEYS
        differ = [f"--{k.replace('_', '-')} {cfg[k]}" for k in MODEL_KEYS
                  if k != "num_classes" and cfg.get(k) is not None]
        hint = f"; the source was trained with {' '.join(differ)}" if differ else ""
    home = {v: k for k, v in TORCHVISION_HOME.items()}
    if source.kind != "checkpoint" and recipe in TORCHVISION_HOME:
        hint += f"; torchvision's {recipe} weights are for recipe {TORCHVISION_HOME[recipe]}"
    elif source.kind != "checkpoint" and recipe in home:
        hint += f" (recipe {recipe} holds torchvision's {home[recipe]})"
    return f"--init-from {source.text}: the body does not fit recipe {recipe}: first mismatch {what}{hint}"


def load_into(model: torch.nn.Module, source: Source, recipe: str, head: List[str],
              new_head: bool = False) -> List[str]:
    """Copy the source's tensors into `model` (the head too where it fits, unless `new_head`); returns
    the log lines (loaded / new / ignored)."""
    ours = model.state_dict()
    state, names, layout = to_our_layout(source, recipe, ours)
    loaded, new = [], []
    for key, mine in ours.items():
        theirs = state.get(key)
        if theirs is not None and tuple(theirs.shape) == tuple(mine.shape) and not (new_head and key in head):
            loaded.append(key)
        elif key in head:
            new.append(key)
        else:
            raise UserError(_mismatch(source, recipe, key, names.get(key) if theirs is not None else None,
                                      state, ours))
    model.load_state_dict({**ours, **{k: state[k] for k in loaded}})
    ignored = [names.get(k, k) for k in state if k not in ours or (new_head and k in head)]
    count = sum(ours[k].numel() for k in loaded)
    origin = {"checkpoint": "our checkpoint", "torchvision": "torchvision's weights",
              "state_dict": "state_dict file"}[source.kind]
    return [f"init from {source.text} ({origin}, {layout} layout): loaded {len(loaded)} tensors, "
            f"{count:,d} values",
            f"init new (as built here: {'a new head' if new else 'the head fits; --new-head for a new one'}): "
            f"{_names(new)}",
            f"init ignored (in the source, not in {recipe}): {_names(ignored)}"]


def source_mean_std(source: Source) -> Tuple[Tuple, Tuple, str]:
    """The normalisation the source was trained with: (mean, std, where it comes from)."""
    cfg = source.config
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's, as torchvision's weights expect"
    if source.meta:  # the checkpoint's own record (toolkit/inference/meta.py), wherever its data went
        return tuple(source.meta["mean"]), tuple(source.meta["std"]), f"the source's ({source.text})"
    if cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"]), f"the source's ({source.text})"
    data = cfg.get("data", "")
    if os.path.isdir(data):
        from toolkit.data import dataset_info
        info = dataset_info(data)
        return info.mean, info.std, f"the source's training set ({data})"
    raise UserError(f"--init-from {source.text}: an older checkpoint without its normalisation, and its "
                    f"training set {data} is not here to read it from; give --mean R,G,B --std R,G,B "
                    "(0-255) as it was trained with")
