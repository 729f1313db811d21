"""The trainer's bookkeeping: a run's checkpoint (what it holds, restoring from it, the finite-weights
check before one is written), the end of an epoch (its lines, checkpoint and validation pass), the
log's header and the Speedometer's lines. Mixed into Trainer (toolkit/engine/trainer.py), whose loop
calls it.
"""
import itertools
import time

import torch

from toolkit import mxlog
from toolkit.engine import checkpoint, dist
from toolkit.engine.logs import Meter, header_lines
from toolkit.engine.lr import get_lr
from toolkit.engine.meta import describe
from toolkit.engine.passes import evaluate
from toolkit.errors import UserError


class NonFiniteLoss(UserError):
    pass


class Bookkeeping:
    """The checkpoints and the log of a Trainer (its cfg, env, log, model, parts, loaders)."""

    def _restore(self, state):
        self.model.load_state_dict(state["model"])
        saved = state.get("config", {})
        for key, flag in (("optimizer", "--optimizer"), ("wd_on_bn_bias", "--wd-on-bn-bias")):
            if saved.get(key, getattr(self.cfg, key)) != getattr(self.cfg, key):
                raise UserError(f"{flag}: the checkpoint's optimizer state is for {key}={saved[key]}, not "
                                f"{getattr(self.cfg, key)}; keep it when resuming, or start a new run with "
                                "tools/train.py --prefix NAME")
        self.parts.load_state_dict(state)  # each part of the step its own: optimizer, scaler, ...
        self.epoch, self.parts.count = state["epoch"], state["step"]
        self.batch = self._remap_batch(state)
        if self.batch and state.get("world_size") == self.env.world:
            self.carry = torch.tensor(state["train_sums"], dtype=torch.float64) if self.env.main else None

    def _remap_batch(self, state) -> int:
        """The position in the epoch, in this run's batches (another world size: same samples seen)."""
        old_global = state["batch_size"] * state["world_size"]
        new_global = self.cfg.batch_size * self.env.world
        return round(state["batch"] * old_global / new_global)

    def _log_start(self, resumed_from):
        params = sum(p.numel() for p in self.model.parameters())
        loader = getattr(self.train_loader, "choice", self.train_loader.backend)  # "dali (auto: GPU decode)"
        for line in header_lines(self.cfg, self.env, loader, params) + self.transfer.lines:
            self.log.info(line)
        if resumed_from:  # logged when the run moves (_log_resume): a launch that never does leaves
            # the log's later epochs in effect, as it leaves their checkpoints in place
            lr = get_lr(self.cfg, self.epoch + self.batch / len(self.train_loader))
            self.resume_line = mxlog.resume_line(resumed_from, self.epoch, self.batch, lr)

    def _log_resume(self):
        line, self.resume_line = self.resume_line, None
        if line:
            self.log.info(line)

    def state(self, epoch: int, batch: int, train_sums=None) -> dict:
        dist.broadcast_buffers(self.model)
        self.check_finite(epoch, batch)
        position = epoch + batch / len(self.train_loader)
        return {"model": checkpoint.bare_state_dict(self.model), **self.parts.state_dict(),  # optimizer, scaler
                "epoch": epoch, "batch": batch, "step": self.parts.count,
                "position": position, "lr": get_lr(self.cfg, position),
                # an epoch checkpoint is written before the epoch's validation pass (see fit)
                "val_epoch": epoch - 1 if batch == 0 and self.val_loader is not None else None,
                "config": dict(vars(self.cfg)), "world_size": self.env.world,
                "batch_size": self.cfg.batch_size, "train_sums": train_sums or [0.0] * 4,
                "rng": {"scheme": "reseeded from (seed, epoch, batch, rank) at every step",
                        "seed": self.cfg.seed},
                "meta": describe(self.cfg)}  # classes, mean/std, input size: for predict and export

    def check_finite(self, epoch: int, batch: int):
        """Every parameter and buffer finite (on every rank) before a checkpoint is written: the
        loss check misses what an epoch's last update did."""
        named = [(n, t) for n, t in itertools.chain(self.model.named_parameters(), self.model.named_buffers())
                 if t.is_floating_point()]
        bad = torch.stack([~torch.isfinite(t).all() for _, t in named]).any().float().view(1)
        if dist.all_reduce_max(bad).item():
            names = [n for n, t in named if not torch.isfinite(t).all()]
            raise NonFiniteLoss(f"the weights became non-finite by Epoch[{epoch}] Batch [{batch}] "
                                f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); nothing "
                                "was saved and the checkpoints on disk are intact: resume from an earlier "
                                "epoch with a lower --lr")

    def save_stop(self, epoch: int, batch: int, meter: Meter) -> dict:
        sums = dist.all_reduce_sum(meter.sums.clone()).tolist()
        state = self.state(epoch, batch, sums)
        path = checkpoint.checkpoint_path(self.cfg.checkpoints_dir, self.cfg.prefix, epoch, batch)
        if self.env.main:
            checkpoint.save(path, state)
            self.log.info(f"Stopped at Epoch[{epoch}] Batch [{batch}]: " + mxlog.checkpoint_line(path))
        dist.barrier()
        return {"stopped": True, "path": path, "epoch": epoch, "batch": batch}

    def end_epoch(self, epoch: int, result: dict) -> str:
        """Log the epoch and write its checkpoint, then validate: a stop asked during the epoch's
        last step skips the pass, one asked during it cuts it short (result["stopped"]); the
        checkpoint already holds the epoch, and a resume from it runs the pass first."""
        for line in mxlog.train_lines(epoch, {k: result[k] for k in ("accuracy", "top_k_accuracy_5", "cross-entropy")}):
            self.log.info(line)
        self.log.info(mxlog.time_cost_line(epoch, result["time"]))
        state = self.state(epoch + 1, 0)
        path = checkpoint.checkpoint_path(self.cfg.checkpoints_dir, self.cfg.prefix, epoch + 1)
        if self.env.main:
            checkpoint.save(path, state)
            checkpoint.prune(self.cfg.checkpoints_dir, self.cfg.prefix, self.cfg.keep_last, (epoch + 1, 0))
            self.log.info(mxlog.checkpoint_line(path))
        if self.val_loader is not None and result["stop_after"]:
            self.log.info(f"Validation of Epoch[{epoch}] skipped by the stop: a resume from {path} runs it first")
            result["stopped"] = True
        elif self.val_loader is not None:
            result["stopped"] = self.validate(epoch, path, result)
        dist.barrier()
        return path

    def validate(self, epoch: int, path: str, result=None) -> bool:
        """Epoch[epoch]'s validation pass (its checkpoint `path` is on disk); True when a stop cut
        it short. A stop asked at its end is left to the caller (result["stop_after"])."""
        val = evaluate(self.model, self.val_loader, self.env, self.cfg.num_classes, self.cfg.amp, stop=self.stop)
        if val.get("stopped"):
            self.log.info(f"Stopped during the validation of Epoch[{epoch}]: a resume from {path} runs it again")
            return True
        metrics = {k: val[k] for k in ("accuracy", "top_k_accuracy_5", "cross-entropy")}
        for line in mxlog.validation_lines(epoch, metrics):
            self.log.info(line)
        if self.env.main:
            checkpoint.save_validation(path, epoch, metrics)
        if result is not None:
            result["val"], result["stop_after"] = val, result["stop_after"] or val["stop_after"]
        return False


class Speedometer:
    """MXNet's Speedometer: every log_every batches, global samples/s and the window's metrics."""

    def __init__(self, trainer, epoch: int, start: int):
        self.t, self.epoch, self.first = trainer, epoch, start
        self.last_time, self.data_time = time.perf_counter(), 0.0

    def tick(self, b: int, data_time: float, window: Meter):
        self.data_time += data_time
        n = b + 1 - self.first
        if (b + 1) % self.t.cfg.log_every and b + 1 != len(self.t.train_loader):
            return
        now = time.perf_counter()
        elapsed = now - self.last_time
        samples = n * self.t.cfg.batch_size * self.t.env.world
        metrics = {**window.metrics(), "data-time": self.data_time / n,
                   "compute-time": max(elapsed - self.data_time, 0.0) / n}
        self.t.log.info(mxlog.batch_line(self.epoch, self.first, b + 1, samples / max(elapsed, 1e-9), metrics))
        window.sums.zero_()
        self.first, self.last_time, self.data_time = b + 1, now, 0.0
