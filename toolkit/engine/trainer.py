"""fit / train_one_epoch: the loop of a run, one code path for CPU and GPU, one or many processes.
The step is toolkit/engine/step.py's parts; checkpoints, the end of an epoch and the log lines are the
bookkeeping (toolkit/engine/bookkeeping.py); the evaluation pass is toolkit/engine/passes.py's.

Exactness across a stop: the LR is a function of the position (toolkit/engine/lr.py), the data order
and augmentation are functions of (seed, epoch, position) (toolkit/data), the dropout RNG is reseeded
from (seed, epoch, batch, rank) at every step, and the checkpoint holds model, optimizer, scaler,
position and the partial epoch's metric sums. So a stopped and resumed run ends bit-identical to an
uninterrupted one (same world size).
"""
import contextlib
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from toolkit.engine import checkpoint, dist
from toolkit.engine.bookkeeping import Bookkeeping, NonFiniteLoss, Speedometer
from toolkit.engine.config import TrainConfig
from toolkit.engine.logs import Meter
from toolkit.engine.model import ModelHook, prepare_model
from toolkit.engine.optim import build_optimizer
from toolkit.engine.passes import make_loaders
from toolkit.engine.step import autocast, build_step, forward_loss


class Trainer(Bookkeeping):
    """Holds the state of a run; `fit()` trains from its position to cfg.epochs."""

    def __init__(self, cfg: TrainConfig, env, log, state=None, resumed_from=None, stop=None, loaders=None,
                 hook=ModelHook):
        # `hook(cfg, env, fresh)`: what the run adds around its model (toolkit/engine/model.py), e.g.
        # transfer learning's --init-from, --freeze-*, --head-lr-mult (handed in by toolkit/training.py)
        self.transfer = hook(cfg, env, fresh=state is None)
        cfg = self.transfer.resolve(cfg)
        self.cfg, self.env, self.log, self.stop = cfg, env, log, stop
        self.train_loader, self.val_loader = loaders or make_loaders(cfg, env)
        self.model = prepare_model(cfg, env)
        self.transfer.attach(self.model, cfg)
        self.optimizer = build_optimizer(self.model, cfg, self.transfer.head)
        self.parts = build_step(cfg, env, self.model, self.optimizer, log)  # the step (toolkit/engine/step.py)
        self.epoch, self.batch, self.carry = 0, 0, None
        if state is not None:
            self._restore(state)
        self.transfer.start_epoch(self.model, self.epoch)
        self._wrap()
        self._pending = None
        self.before_first_step = None  # called once, before the first training step (a resume's branch)
        self.started, self.resume_line = False, None
        # an epoch checkpoint whose validation pass a stop cut short: validated again first
        self.resumed_from, self.pending_val = resumed_from, None
        if state is not None and resumed_from and self.val_loader is not None:
            self.pending_val = checkpoint.pending_validation(resumed_from, state)
        self._log_start(resumed_from)

    def _wrap(self):
        """DDP (which syncs the parameters that learn when it is built) and torch.compile around the model."""
        self.ddp = self.net = None  # a replaced DDP's reducer must go before the new one hooks in
        self.ddp = DDP(self.model, device_ids=[self.env.device] if self.env.device.type == "cuda" else None) \
            if self.env.world > 1 else None
        self.net = self.ddp or self.model
        if self.ddp is not None:
            self._settle_buckets()
        if self.cfg.compile:
            self.net = torch.compile(self.net)
        self.parts.net, self.parts.ddp = self.net, self.ddp

    def _settle_buckets(self):
        """One throwaway forward and backward through the new DDP, so that every training step of
        every launch uses DDP's rebuilt gradient buckets. DDP reduces the first backward in one
        bucket of all parameters in registration order, then rebuilds its buckets in the order the
        gradients became ready; the bucket layout decides each element's summation order in the
        all-reduce (with 3 or more ranks the ring sums chunks starting at different ranks), so a
        resumed run, whose first step used the first layout where the straight run used the
        rebuilt one, ended 93 of resnet20's 116 tensors apart on 3 processes. Rebuilding here,
        deterministically (the ready order is autograd's, which the graph fixes, and DDP takes rank
        0's), keeps the rebuilt layout's overlap of communication with the backward pass. Not
        find_unused_parameters=True (no rebuild ever): a graph traversal at every step, and the
        registration-order buckets start later. The cost: one step of 2 blank images per launch.
        Nothing of it stays: buffers (BatchNorm's statistics), gradients and RNG are restored."""
        saved = [b.detach().clone() for b in self.model.buffers()]
        devices = [self.env.device] if self.env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # in the modes of a training step (frozen BatchNorm: eval)
            x = torch.zeros(2, 3, self.cfg.image_size, self.cfg.image_size, device=self.env.device)
            if self.cfg.channels_last:
                x = x.to(memory_format=torch.channels_last)
            y = torch.zeros(2, dtype=torch.long, device=self.env.device)
            with autocast(self.env, self.cfg.amp):
                _, loss = forward_loss(self.ddp, x, y, nn.CrossEntropyLoss(), getattr(self.model, "aux_weight", 0.3))
            loss.backward()
        for b, value in zip(self.model.buffers(), saved):
            b.copy_(value)
        self.model.zero_grad(set_to_none=True)

    def fit(self) -> dict:
        result = {}
        if self.pending_val is not None:
            self._log_resume()  # before the resumed validation's lines (the log parser reads them so)
        if self.pending_val is not None and self.validate(self.pending_val, self.resumed_from):
            return {"stopped": True, "path": self.resumed_from, "epoch": self.epoch, "batch": 0}
        for epoch in range(self.epoch, self.cfg.epochs):
            result = self.train_one_epoch(epoch, self.batch)
            self.batch = 0
            if result.get("stopped"):
                return result
            path = self.end_epoch(epoch, result)
            if result.get("stopped") or (result["stop_after"] and epoch + 1 < self.cfg.epochs):
                self.log.info(f"Stopped after Epoch[{epoch}]: {path}")
                return {"stopped": True, "path": path, "epoch": epoch + 1, "batch": 0}
        return result

    def _post_flags(self, loss: torch.Tensor, epoch: int, b: int) -> bool:
        """Start this step's all-reduce of [stop requested, loss not finite] and read the previous
        step's. Reading one step late keeps the host from waiting for the device at every step (on
        GPUs the next step is queued meanwhile), and every rank reads the same values at the same
        step, so all stop together. Raises NonFiniteLoss for a NaN/inf loss on any rank."""
        if self.stop is not None and hasattr(self.stop, "arm"):
            self.stop.arm()  # from the first step on, a stop has something to save
        flags = torch.stack([torch.tensor(float(bool(self.stop and self.stop.requested)), device=loss.device),
                             (~torch.isfinite(loss.detach())).float()])
        previous, self._pending = self._pending, (flags, dist.all_reduce_max_async(flags), epoch, b, loss.detach())
        return self._read_flags(previous)

    def _drain_flags(self) -> bool:
        """The last step's flags (before a checkpoint is written: never save NaN weights)."""
        pending, self._pending = self._pending, None
        return self._read_flags(pending)

    def _read_flags(self, pending) -> bool:
        if pending is None:
            return False
        flags, work, epoch, b, loss = pending
        if work is not None:
            work.wait()
        stop, bad = flags.tolist()
        if bad:
            raise NonFiniteLoss(f"the loss became {loss.item()} at Epoch[{epoch}] Batch [{b}] "
                                f"on some rank; checkpoints on disk are intact: resume from an earlier "
                                "epoch with a lower --lr")
        return bool(stop)

    def _first_step(self):
        """The run moves from here: the resume's log line and branch, and a stop now writes a
        checkpoint (armed first, so a signal held during the branch's file moves is a stop after
        this step, not an exit without one)."""
        self.started = True
        if self.stop is not None and hasattr(self.stop, "arm"):
            self.stop.arm()
        self._log_resume()
        hook, self.before_first_step = self.before_first_step, None
        if hook is not None:
            hook()

    def train_step(self, x, y, epoch: int, b: int, nb: int) -> tuple:
        """One micro-batch through the step's parts (toolkit/engine/step.py): (logits, loss, whether
        the optimizer stepped). The first one moves the run (_first_step)."""
        if not self.started:
            self._first_step()
        return self.parts(x, y, epoch, b, nb, self.cfg.grad_accum)

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict:
        """On a terminal (rank 0), a progress bar; log lines print above it, the log file has none."""
        show = self.env.main and sys.stderr.isatty()
        with tqdm(total=len(self.train_loader), initial=start, desc=f"Epoch[{epoch}]", unit="batch",
                  leave=False, disable=not show) as bar, \
                (logging_redirect_tqdm([self.log]) if show else contextlib.nullcontext()):
            return self._train_one_epoch(epoch, start, bar)

    def _train_one_epoch(self, epoch: int, start: int, bar) -> dict:
        self.train_loader.set_epoch(epoch, start)
        self.net.train()
        if self.transfer.start_epoch(self.model, epoch, self.log):  # frozen BatchNorm back to eval
            self._wrap()
        nb, t0 = len(self.train_loader), time.perf_counter()
        meter, window = Meter(self.env.device), Meter(self.env.device)
        if start and self.carry is not None:
            meter.sums += self.carry.to(self.env.device)
        speed = Speedometer(self, epoch, start)
        t_fetch, seen = time.perf_counter(), False
        for b, (x, y) in enumerate(self.train_loader, start):
            t_data = time.perf_counter() - t_fetch
            logits, loss, boundary = self.train_step(x, y, epoch, b, nb)
            with torch.no_grad():
                ce = F.cross_entropy(logits, y, reduction="sum")
            sums = Meter.batch_sums(logits, y, ce)
            meter.sums += sums
            window.sums += sums
            stop = self._post_flags(loss, epoch, b)
            speed.tick(b, t_data, window)
            bar.update(1)
            if stop and boundary and b + 1 < nb:
                self._drain_flags()
                return self.save_stop(epoch, b + 1, meter)
            seen = seen or stop  # at the epoch's last step: the epoch's own checkpoint (end_epoch)
            t_fetch = time.perf_counter()
        stop_after = self._drain_flags() or seen
        sums = dist.all_reduce_sum(meter.sums.clone())
        return {**meter.metrics(sums), "time": time.perf_counter() - t0, "stop_after": stop_after}

