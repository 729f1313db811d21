"""Optimizers, with no weight decay on BatchNorm and bias parameters unless asked for."""
import torch

from toolkit.engine.config import TrainConfig


def param_groups(model: torch.nn.Module, cfg: TrainConfig):
    if cfg.wd_on_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # 1-d parameters are biases and BatchNorm (and PReLU) weights
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adagrad(groups, lr=cfg.lr)
