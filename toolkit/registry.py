"""The recipe registry: build a network by name, with its paper's training defaults.

A recipe is a function `fn(**model_options) -> nn.Module` registered with `@register_recipe(name,
defaults=TrainDefaults(...))`. The trainer only ever calls `build_model(name, **opts)` and
`get_recipe(name).defaults`; it never asks which model it is training.
"""
import dataclasses
import fnmatch
import importlib
import pkgutil
from typing import Callable, Dict, List, Optional, Tuple

from toolkit.errors import UserError


@dataclasses.dataclass(frozen=True)
class TrainDefaults:
    """Training hyper-parameters a recipe's paper (or standard practice since) used; cite `source`."""
    optimizer: str = "sgd"            # sgd | adam | adamw | rmsprop | adagrad
    lr: float = 0.1                   # for batch_size images per GPU times `lr_reference_gpus` GPUs
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    batch_size: int = 32              # per GPU (per process)
    epochs: int = 90
    lr_schedule: str = "step"         # step | multistep | poly | linear | cosine | constant
    lr_step_epochs: Tuple[int, ...] = (30, 60)
    lr_factor: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    image_size: int = 224
    eval_resize: int = 256            # shorter side before the centre crop at eval
    train_aug: str = "random_resized_crop,flip"
    eval_aug: str = "resize,center_crop"
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    fn: Callable
    defaults: TrainDefaults
    min_image_size: int
    family: str


_REGISTRY: Dict[str, Recipe] = {}


def register_recipe(name: str, defaults: TrainDefaults = TrainDefaults(), min_image_size: int = 32):
    """Decorator registering a model constructor under `name`; a duplicate name is an error."""
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"recipe {name!r} is registered twice "
                             f"({_REGISTRY[name].fn.__module__} and {fn.__module__})")
        _REGISTRY[name] = Recipe(name, fn, defaults, min_image_size, fn.__module__)
        return fn
    return wrap


def _load_all():
    import recipes  # every module in recipes/ registers its networks when imported
    for mod in pkgutil.iter_modules(recipes.__path__):
        importlib.import_module(f"recipes.{mod.name}")


def list_recipes(pattern: Optional[str] = None) -> List[str]:
    _load_all()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_recipe(name: str) -> Recipe:
    _load_all()
    if name not in _REGISTRY:
        raise UserError(f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(name: str, **options):
    """Build recipe `name` with model options (num_classes, image_size, act, bn, init, ...).

    Options given as None mean "the recipe's default" and are dropped.
    """
    return get_recipe(name).fn(**{k: v for k, v in options.items() if v is not None})
