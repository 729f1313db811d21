"""The run configuration: one frozen dataclass, the recipe's defaults first, then the user's options.

An unknown key or a bad value is a one-line UserError. The resolved configuration goes into the log
header and into every checkpoint, and it is all a resumed run needs besides the checkpoint's state.
"""
import dataclasses
import hashlib
import json
import os
from typing import Optional, Tuple

from toolkit.cli import AMP, OPTIMIZERS, SCHEDULES, model_kwargs
from toolkit.errors import UserError
from toolkit.registry import get_recipe
from toolkit.rules import problems


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    recipe: str
    data: str = "data/toy"
    train_split: str = "train"
    val_split: str = "val"
    # optimisation (None: the recipe's default)
    epochs: int = 90
    batch_size: int = 32                 # per process
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    wd_on_bn_bias: bool = False          # weight decay on BatchNorm and bias parameters
    lr_schedule: str = "multistep"
    lr_step_epochs: Tuple[float, ...] = (30, 60)
    lr_factor: float = 0.1
    poly_power: float = 2.0
    warmup_epochs: float = 0.0
    lr_from_epoch: float = 0.0           # where the current schedule starts (a resume with --lr)
    label_smoothing: float = 0.0
    grad_accum: int = 1
    # model (None: the recipe's default; num_classes: the dataset's classes file)
    image_size: Optional[int] = None
    num_classes: Optional[int] = None
    act: Optional[str] = None
    bn: Optional[str] = None
    init: Optional[str] = None
    bias_init: Optional[float] = None
    dropout: Optional[float] = None
    width: Optional[float] = None
    graph: str = ""                      # recipe mxnet: the imported MXNet graph as JSON (toolkit/mxnet_import)
    # input
    loader: str = "auto"
    workers: int = 2
    timeout: float = 300.0               # seconds any wait (a batch, the other ranks) may last
    min_crop_scale: float = 0.08
    eval_resize: Optional[int] = None
    color_jitter: float = 0.0
    pca_lighting: float = 0.0
    # speed
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False          # deterministic GPU kernels (toolkit/engine/determinism.py)
    # bookkeeping
    seed: int = 0
    prefix: str = ""
    logs_dir: str = "logs"
    checkpoints_dir: str = "checkpoints"
    log_every: int = 20
    keep_last: int = 0                   # 0: keep every epoch checkpoint
    # transfer learning (toolkit/transfer)
    init_from: str = ""                  # weights to start from: checkpoint, state_dict file, torchvision:NAME
    mean: Optional[Tuple[float, ...]] = None   # 0-255 RGB; None: the source's with init_from, else the
    std: Optional[Tuple[float, ...]] = None    # dataset's; (): the dataset's
    freeze_epochs: int = 0               # epochs in which only the head learns
    freeze_until: str = ""               # layers up to this one stay frozen
    head_lr_mult: float = 1.0            # the head's LR: this times the LR
    new_head: bool = False               # a new head even where the source's has the same shape

    def model_kwargs(self) -> dict:
        kwargs = model_kwargs(dataclasses.asdict(self))
        return {**kwargs, "graph": self.graph} if self.graph else kwargs

    def to_json(self) -> str:
        """For the log header: an imported graph as its digest (the checkpoint holds the graph)."""
        d = dataclasses.asdict(self)
        if self.graph:
            d["graph"] = f"sha256:{hashlib.sha256(self.graph.encode()).hexdigest()[:16]}, {len(self.graph)} bytes"
        return json.dumps(d, sort_keys=True)


def _recipe_defaults(recipe: str) -> dict:
    d = get_recipe(recipe).defaults
    return dict(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, optimizer=d.optimizer,
                momentum=d.momentum, nesterov=d.nesterov, weight_decay=d.weight_decay,
                lr_schedule=d.lr_schedule, lr_step_epochs=tuple(d.lr_step_epochs),
                lr_factor=d.lr_factor, warmup_epochs=d.warmup_epochs,
                label_smoothing=d.label_smoothing, image_size=d.image_size, eval_resize=d.eval_resize,
                pca_lighting=0.1 if "pca_lighting" in d.train_aug else 0.0)


def _check_keys(overrides: dict):
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UserError(f"unknown configuration key(s) {', '.join(unknown)}")


def make_config(recipe: str, **overrides) -> TrainConfig:
    """Recipe defaults, then every override that is not None; unknown keys are errors."""
    _check_keys(overrides)
    values = _recipe_defaults(recipe)
    base_size, base_resize = values["image_size"], values["eval_resize"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("eval_resize") is None:  # another image size keeps the recipe's resize/crop ratio
        values["eval_resize"] = int(round(base_resize * values["image_size"] / base_size))
    values["prefix"] = values.get("prefix") or recipe
    cfg = TrainConfig(recipe=recipe, **values)
    validate(cfg)
    return cfg


def override(cfg: TrainConfig, **overrides) -> TrainConfig:
    """A copy with the given (non-None) options changed, validated."""
    _check_keys(overrides)
    new = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    validate(new)
    return new


def from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["lr_step_epochs"] = tuple(d.get("lr_step_epochs", ()))
    for key in ("mean", "std"):
        d[key] = tuple(d[key]) if d.get(key) is not None else None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in known})


# what does not make a run another experiment: where it writes, how it is named, how fast or how
# verbosely it runs, and lr_from_epoch (a resume with a new --lr sets it)
NOT_IDENTITY = {"prefix", "logs_dir", "checkpoints_dir", "workers", "timeout", "log_every", "keep_last",
                "loader", "channels_last", "compile", "deterministic", "lr_from_epoch"}


def identity_differences(planned: dict, recorded: dict) -> list:
    """[(key, planned value, recorded value)] where a planned configuration is another experiment
    than a recorded one (a run's identity: its resolved configuration). Options left to be resolved
    at run time (None; --mean/--std dataset) and keys the record lacks (older runs) are not compared."""
    out = []
    for key in sorted(planned):
        want, have = _comparable(key, planned[key]), _comparable(key, recorded.get(key))
        if key in NOT_IDENTITY or key not in recorded or want is None or (key in ("mean", "std") and not want):
            continue
        if want != have:
            out.append((key, planned[key], recorded.get(key)))
    return out


def _comparable(key: str, value):
    if isinstance(value, (tuple, list)):
        return [float(v) for v in value] if all(isinstance(v, (int, float)) for v in value) else list(value)
    if key in ("data", "init_from") and isinstance(value, str) and value and ":" not in value:
        return os.path.normpath(value)
    return value


def flag_text(key: str, value) -> str:
    """A configuration value as the command-line flag that gives it: --epochs 3, --no-nesterov."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if isinstance(value, (tuple, list)):
        return f"{flag} {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value)}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def validate(cfg: TrainConfig):
    checks = [
        (cfg.optimizer in OPTIMIZERS, f"--optimizer {cfg.optimizer}: valid: {', '.join(OPTIMIZERS)}"),
        (cfg.lr_schedule in SCHEDULES, f"--lr-schedule {cfg.lr_schedule}: valid: {', '.join(SCHEDULES)}"),
        (cfg.amp in AMP, f"--amp {cfg.amp}: valid: {', '.join(AMP)}"),
        *((False, problem) for problem in problems(dataclasses.asdict(cfg))),  # toolkit/rules.py's ranges
        (all(v is None or len(v) in (0, 3) for v in (cfg.mean, cfg.std)) and all(s > 0 for s in cfg.std or ()),
         "--mean/--std: three values R,G,B (0-255; std positive) or 'dataset'"),
        (cfg.lr_schedule != "multistep" or cfg.lr_step_epochs,
         "--lr-schedule multistep needs --lr-step-epochs (e.g. 30,60)"),
        (cfg.lr_schedule != "step" or (cfg.lr_step_epochs and cfg.lr_step_epochs[0] > 0),
         "--lr-schedule step needs --lr-step-epochs with the period in epochs (e.g. 30)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
