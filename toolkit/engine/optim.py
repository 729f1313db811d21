"""Optimizers, with no weight decay on BatchNorm and bias parameters unless asked for."""
import torch

from toolkit.engine.config import TrainConfig


def _groups(params, cfg: TrainConfig, extra: dict):
    if cfg.wd_on_bn_bias:
        return [{"params": params, "weight_decay": cfg.weight_decay, **extra}]
    # 1-d parameters are biases and BatchNorm (and PReLU) weights
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, **extra},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra}]


def param_groups(model: torch.nn.Module, cfg: TrainConfig, head=()):
    """Decay and no-decay groups; with --head-lr-mult, the head's (`head`: its state-dict keys) in
    groups of their own carrying `lr_mult`, the factor the trainer applies to the LR."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if cfg.head_lr_mult != 1 and head:
        head = set(head)
        return (_groups([p for n, p in named if n not in head], cfg, {})
                + _groups([p for n, p in named if n in head], cfg, {"lr_mult": cfg.head_lr_mult}))
    return _groups([p for _, p in named], cfg, {})


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, head=()) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, head)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adagrad(groups, lr=cfg.lr)
