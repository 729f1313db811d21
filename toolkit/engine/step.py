"""One training step as a composition of named parts:

    batch transform -> forward + loss -> backward (accumulation, loss scaling) -> optimizer step
    -> after-step updates

Each part is a `Part`: it does its one thing when called, and if it has state that decides the
result of a run it names its key in the checkpoint (`name`) and saves and restores that state through
`state_dict()` / `load_state_dict(saved)` (`saved` is None for a checkpoint written before the part
existed: it starts fresh). `Step.state_dict()` gathers the parts' states for the checkpoint and
`Step.load_state_dict(checkpoint)` hands each part its own. A new ingredient (batch mixing, EMA
weights, a resolution schedule) is a new part in `build_step`, not a new branch in the trainer.
"""
import contextlib
import dataclasses
from typing import List, Optional

import torch
import torch.nn as nn

from toolkit import mxlog
from toolkit.data.sampler import DROPOUT, sample_seed
from toolkit.engine.lr import CONTINUOUS, get_lr

# the checkpoint's own keys, which no part may take
RESERVED = frozenset({"version", "model", "epoch", "batch", "step", "position", "lr", "val_epoch", "config",
                      "world_size", "batch_size", "train_sums", "rng", "meta"})


@dataclasses.dataclass(frozen=True)
class At:
    """Where a step is: Epoch[epoch], its batch `batch` of `batches`; `boundary`: the last
    micro-batch of an accumulation (the optimizer steps after it); `step`: optimizer steps done."""
    epoch: int
    batch: int
    batches: int
    boundary: bool
    step: int


class Part:
    """A part of the step. `name`: its key in the checkpoint, None when it holds no state."""
    name: Optional[str] = None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, saved: Optional[dict]):
        pass


class BatchTransform(Part):
    """The batch as the loader gives it (batch mixing goes here)."""

    def __call__(self, x, y, at: At):
        return x, y


def autocast(env, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(env.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def forward_loss(net, x, y, criterion, aux_weight: float = 0.3):
    out = net(x)
    if isinstance(out, tuple):  # auxiliary heads (GoogLeNet): discounted as the model says
        return out[0], criterion(out[0], y) + aux_weight * sum(criterion(o, y) for o in out[1:])
    return out, criterion(out, y)


class ForwardLoss(Part):
    """Logits and loss under autocast; dropout masks a function of (seed, epoch, batch, rank)."""

    def __init__(self, cfg, env, model: nn.Module):
        self.env, self.amp, self.seed = env, cfg.amp, cfg.seed
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.aux_weight = getattr(model, "aux_weight", 0.3)
        self.stochastic = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())

    def __call__(self, net, x, y, at: At):
        if self.stochastic:  # exact on resume: reseeded at every step
            torch.manual_seed(sample_seed(self.seed, at.epoch, at.batch * self.env.world + self.env.rank, DROPOUT))
        with autocast(self.env, self.amp):
            return forward_loss(net, x, y, self.criterion, self.aux_weight)


class Backward(Part):
    """Gradients of loss / grad_accum, scaled (fp16; a no-op scaler otherwise); DDP all-reduces only
    at an accumulation's last micro-batch. State: the loss scaler's (empty when not fp16)."""
    name = "scaler"

    def __init__(self, cfg, env):
        self.grad_accum = cfg.grad_accum
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp == "fp16")

    def accumulating(self, ddp, at: At):
        """Around forward and backward: no all-reduce before the accumulation's last micro-batch."""
        return contextlib.nullcontext() if at.boundary or ddp is None else ddp.no_sync()

    def __call__(self, loss):
        self.scaler.scale(loss / self.grad_accum).backward()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, saved):
        if saved:  # empty when the run was not fp16
            self.scaler.load_state_dict(saved)


class OptimizerStep(Part):
    """The LR of the position (toolkit/engine/lr.py, logged where it changes) and, at a boundary, the
    optimizer's step through the scaler. State: the optimizer's (its momentum buffers and moments;
    its hyper-parameters come from the configuration, possibly changed on the command line)."""
    name = "optimizer"

    def __init__(self, cfg, optimizer, scaler, log):
        self.cfg, self.optimizer, self.scaler, self.log = cfg, optimizer, scaler, log
        self.lr = None

    def set_lr(self, at: At):
        cfg, where = self.cfg, at.epoch + at.batch / at.batches
        lr = get_lr(cfg, where)
        if lr != self.lr:
            discrete = cfg.lr_schedule not in CONTINUOUS and not (
                cfg.warmup_epochs and where < cfg.lr_from_epoch + cfg.warmup_epochs)
            if self.lr is None or discrete or at.batch == 0:
                self.log.info(mxlog.lr_change_line(at.step, lr))
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            self.lr = lr

    def __call__(self, at: At):
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, saved):
        fresh = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, values in zip(self.optimizer.param_groups, fresh):
            group.update(values)


class Step:
    """The step: its parts in order, `after` the updates that follow an optimizer step (EMA, ...).
    `net` and `ddp` are the trainer's wrapped model (replaced when DDP is rebuilt)."""

    def __init__(self, transform: BatchTransform, forward: ForwardLoss, backward: Backward,
                 optimizer: OptimizerStep, after: List[Part] = ()):
        self.transform, self.forward, self.backward, self.optimizer = transform, forward, backward, optimizer
        self.after = list(after)
        self.net = self.ddp = None
        self.count = 0  # optimizer steps done
        taken = [p.name for p in self.parts() if p.name]
        if len(set(taken)) < len(taken) or RESERVED & set(taken):
            raise ValueError(f"the step's parts take checkpoint keys {taken}: each its own, none of {sorted(RESERVED)}")

    def parts(self) -> List[Part]:
        return [self.transform, self.forward, self.backward, self.optimizer, *self.after]

    def __call__(self, x, y, epoch: int, batch: int, batches: int, grad_accum: int) -> tuple:
        """One micro-batch: (logits as float, loss, whether the optimizer stepped)."""
        at = At(epoch, batch, batches, (batch + 1) % grad_accum == 0 or batch + 1 == batches, self.count)
        self.optimizer.set_lr(at)
        x, y = self.transform(x, y, at)
        with self.backward.accumulating(self.ddp, at):
            logits, loss = self.forward(self.net, x, y, at)
            self.backward(loss)
        if at.boundary:
            self.optimizer(at)
            self.count += 1
            for update in self.after:
                update(at)
        return logits.float(), loss, at.boundary

    def state_dict(self) -> dict:
        """Each stateful part's state under its name: the checkpoint's "optimizer", "scaler", ..."""
        return {p.name: p.state_dict() for p in self.parts() if p.name}

    def load_state_dict(self, checkpoint: dict):
        for p in self.parts():
            if p.name:
                p.load_state_dict(checkpoint.get(p.name))


def build_step(cfg, env, model: nn.Module, optimizer, log) -> Step:
    """The run's step from its configuration: the one place its parts are chosen."""
    backward = Backward(cfg, env)
    return Step(BatchTransform(), ForwardLoss(cfg, env, model), backward,
                OptimizerStep(cfg, optimizer, backward.scaler, log))
