"""The network of a run, built from its configuration: the one place a model is made.

    prepare_model(cfg, env)        # a run's model (seeded, on its device, layout, SyncBatchNorm)
    build_eval_model(cfg, state)   # a checkpoint's model in eval mode, on the CPU, from its config
"""
import torch
import torch.nn as nn

from toolkit.engine.config import override
from toolkit.errors import UserError
from toolkit.registry import build_model


def prepare_model(cfg, env) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = build_model(cfg.recipe, **cfg.model_kwargs()).to(env.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and env.world > 1:
        if env.device.type != "cuda":
            raise UserError("--sync-bn needs GPUs (NCCL); leave it out on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_eval_model(cfg, state: dict) -> nn.Module:
    """A checkpoint's network from its configuration (`cfg`, from state["config"]) with its weights
    (state["model"]), in eval mode on the CPU."""
    from toolkit.engine.dist import DistEnv
    env = DistEnv(0, 0, 1, torch.device("cpu"))
    model = prepare_model(override(cfg, sync_bn=False, channels_last=False), env)
    model.load_state_dict(state["model"])
    return model.eval()
