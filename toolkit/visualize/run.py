"""A trained run as the pictures need it: the checkpoint's model in eval mode on a device, the run's
evaluation preprocessing (resize, centre crop, mean/std: the checkpoint's, through the eval loader's
own transform) and the checkpoint's class names; batched predictions and layer lookup by name."""
import dataclasses
import difflib
import os
import types
from typing import List, Optional

import torch
import torch.nn as nn

from toolkit.data.torch_backend import normalize
from toolkit.data.transforms import build_transform
from toolkit.engine import checkpoint
from toolkit.engine.config import TrainConfig, override
from toolkit.engine.model import prepare_model
from toolkit.errors import UserError


class Logits(nn.Module):
    """The model's logits only (GoogLeNet's auxiliary heads, where a model returns them, dropped)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


@dataclasses.dataclass
class Run:
    path: str                  # the checkpoint
    cfg: TrainConfig
    model: nn.Module           # the bare model, eval mode, on `device`
    device: torch.device
    data: str
    class_names: List[str]
    mean: torch.Tensor         # (1, 3, 1, 1) 0-255 RGB, on device
    std: torch.Tensor

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def logits(self) -> nn.Module:
        return Logits(self.model)

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def eval_transform(self):
        return build_transform(False, self.cfg.image_size, self.cfg.eval_resize)

    def class_name(self, label) -> str:
        if label is None or label < 0:
            return "?"
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW as the eval loader gives it -> the normalised float batch on the device."""
        return normalize(images, self.mean, 1.0 / self.std, self.device, torch.float32, False)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float -> uint8 NCHW on the CPU (for showing what the network was given)."""
        return (x.detach() * self.std + self.mean).clamp(0, 255).round().to(torch.uint8).cpu()

    def valid_range(self):
        """The normalised values of pixels 0 and 255, per channel: (low, high), each (1, 3, 1, 1)."""
        return (0 - self.mean) / self.std, (255 - self.mean) / self.std

    def module(self, name: str, flag: str = "--layer") -> nn.Module:
        modules = dict(self.model.named_modules())
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3) or \
                [n for n in modules if n][-3:]
            raise UserError(f"{flag} {name}: no such layer in {self.cfg.recipe} (close: {', '.join(close)}); "
                            "list them with: tools/visualize.py activations --list-layers")
        return modules[name]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Softmax probabilities (N, classes) on the CPU for a uint8 NCHW batch, in chunks."""
        out = [self.logits(self.normalize(images[i:i + batch_size])).float().softmax(1).cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: expected cpu, cuda, cuda:N or auto") from None


def load_run(checkpoints_dir: str = "checkpoints", prefix: Optional[str] = None, epoch: Optional[int] = None,
             data: Optional[str] = None, device: str = "auto") -> Run:
    """The checkpoint (PREFIX-NNNN.pt, or the newest) with the model its configuration builds; its
    normalisation, input size and class names are the checkpoint's (meta); `data` (default: the
    run's dataset) is read for records only, its classes.tsv checked against the model's names."""
    from toolkit.engine.meta import check_class_map, load_trained
    path = checkpoint.find(checkpoints_dir, prefix, epoch)
    state, cfg, meta = load_trained(path, data)
    data = data or cfg.data
    if os.path.isdir(data):
        check_class_map(meta, data, path)
    dev = resolve_device(device)
    env = types.SimpleNamespace(device=dev, world=1, rank=0)
    model = prepare_model(override(cfg, sync_bn=False, channels_last=False, compile=False), env)
    model.load_state_dict(state["model"])
    model.eval()
    mean = torch.tensor(meta["mean"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    return Run(path, cfg, model, dev, data, list(meta["class_names"]), mean, std)
