"""The network of a run, built from its configuration: the one place a model is made.

    prepare_model(cfg, env)        # a run's model (seeded, on its device, layout, SyncBatchNorm)
    build_eval_model(cfg, state)   # a checkpoint's model in eval mode, on the CPU, from its config
    load_member(path)              # a checkpoint file ready to run: (path, model, meta, config)
"""
import dataclasses
from typing import Optional

import torch
import torch.nn as nn

from toolkit.engine.config import override
from toolkit.engine.meta import load_trained
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



@dataclasses.dataclass
class Member:
    """One checkpoint ready to run: eval-mode model, its meta and configuration."""
    path: str
    model: torch.nn.Module
    meta: dict
    cfg: object


def load_member(path: str, data: Optional[str] = None) -> Member:
    state, cfg, meta = load_trained(path, data)
    return Member(path, build_eval_model(cfg, state), meta, cfg)


class ModelHook:
    """What a run may add around its model, handed to the Trainer where the run is composed
    (toolkit/training.py hands in transfer learning's, toolkit/transfer/hook.py). This one adds
    nothing. `resolve(cfg)`: the configuration the run uses (before its loaders are built);
    `attach(model, cfg)`: after the model is built, before the optimizer (`head`: the parameter-name
    prefixes that get --head-lr-mult); `start_epoch(model, epoch, log)`: after model.train(), True
    when what learns changed (DDP is then rebuilt); `lines`: for the log's header."""

    def __init__(self, cfg=None, env=None, fresh: bool = True):
        self.lines, self.head, self.fresh = [], [], fresh

    def resolve(self, cfg):
        """A fresh run's normalisation, written into its configuration from its start: --mean/--std,
        else the dataset's (a resume keeps its run's)."""
        if not self.fresh or cfg.mean is not None or cfg.std is not None:
            return cfg
        from toolkit.data.discovery import dataset_info
        data = dataset_info(cfg.data)
        return override(cfg, mean=tuple(data.mean), std=tuple(data.std))

    def attach(self, model: nn.Module, cfg):
        pass

    def start_epoch(self, model: nn.Module, epoch: int, log=None) -> bool:
        return False
