"""fit / train_one_epoch / evaluate: one code path for CPU and GPU, one or many processes.

Exactness across a stop: the LR is a function of the position (toolkit/engine/lr.py), the data order
and augmentation are functions of (seed, epoch, position) (toolkit/data), the dropout RNG is reseeded
from (seed, epoch, batch, rank) at every step, and the checkpoint holds model, optimizer, scaler,
position and the partial epoch's metric sums. So a stopped and resumed run ends bit-identical to an
uninterrupted one (same world size).
"""
import contextlib
import itertools
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from toolkit import mxlog
from toolkit.data import build_loader
from toolkit.data.discovery import has_split
from toolkit.engine import checkpoint, dist
from toolkit.engine.config import TrainConfig
from toolkit.engine.logs import Meter, header_lines
from toolkit.engine.lr import get_lr
from toolkit.engine.optim import build_optimizer
from toolkit.engine.signals import Agreement
from toolkit.errors import UserError
from toolkit.engine.meta import describe
from toolkit.engine.model import ModelHook, prepare_model
from toolkit.engine.step import autocast, build_step

class NonFiniteLoss(UserError):
    pass


def _loader_args(cfg: TrainConfig, env, backend=None, workers=None) -> dict:
    return dict(image_size=cfg.image_size, eval_resize=cfg.eval_resize, rank=env.rank, world_size=env.world,
                seed=cfg.seed, backend=backend or cfg.loader, device=env.device,
                workers=cfg.workers if workers is None else workers, channels_last=cfg.channels_last,
                timeout=cfg.timeout, mean=cfg.mean, std=cfg.std)


def make_eval_loader(cfg: TrainConfig, env, data=None, split=None, batch_size=None, backend=None,
                     workers=None, ten_crop=False):
    """The evaluation loader of a run (its image size, resize and layout): training's validation
    and tools/evaluate.py."""
    return build_loader(data or cfg.data, split or cfg.val_split, train=False,
                        batch_size=batch_size or cfg.batch_size, ten_crop=ten_crop,
                        **_loader_args(cfg, env, backend, workers))


def make_loaders(cfg: TrainConfig, env):
    train = build_loader(cfg.data, cfg.train_split, train=True, batch_size=cfg.batch_size,
                         min_scale=cfg.min_crop_scale, color_jitter=cfg.color_jitter,
                         pca_lighting=cfg.pca_lighting, **_loader_args(cfg, env))
    if not has_split(cfg.data, cfg.val_split):
        return train, None
    return train, make_eval_loader(cfg, env, backend=train.backend)  # validation decodes as training


def evaluate(model, loader, env, num_classes: int, amp: str = "off", stop=None) -> dict:
    """Top-1/top-5/cross-entropy over a split, exact across ranks (each image counted once).
    With `stop` (training's validation), ranks agree on a stop request at every batch and all leave
    the pass at the same one: {"stopped": True}; a request seen only at the end: "stop_after"."""
    model.eval()
    meter = Meter(env.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=env.device)
    loader.set_epoch(0)
    agree = Agreement(stop, env.device, len(loader)) if stop is not None else None
    stopped = False
    with torch.no_grad(), autocast(env, amp):
        for x, y in loader:
            if x.dim() == 5:  # ten-crop: average the softmax over the crops
                b, c = x.shape[:2]
                logits = model(x.flatten(0, 1)).float().softmax(1).view(b, c, -1).mean(1).log()
            else:
                logits = model(x).float()
            meter.update(logits, y, F.cross_entropy(logits, y, reduction="sum"))
            confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                        minlength=num_classes ** 2).view(num_classes, num_classes)
            if agree is not None and agree.round():
                stopped = True
                break
    if agree is not None and (stopped or agree.finish()):
        agree.drain()
        return {"stopped": True}
    sums = dist.all_reduce_sum(meter.sums.clone())
    dist.all_reduce_sum(confusion)
    return {**meter.metrics(sums), "images": int(sums[3].item()), "confusion": confusion.cpu(),
            "stop_after": agree is not None and agree.drain()}


class Trainer:
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
        if self.cfg.compile:
            self.net = torch.compile(self.net)
        self.parts.net, self.parts.ddp = self.net, self.ddp

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
        if resumed_from:
            lr = get_lr(self.cfg, self.epoch + self.batch / len(self.train_loader))
            self.log.info(mxlog.resume_line(resumed_from, self.epoch, self.batch, lr))

    def fit(self) -> dict:
        result = {}
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
            logits, loss, boundary = self.parts(x, y, epoch, b, nb, self.cfg.grad_accum)
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

    def __init__(self, trainer: Trainer, epoch: int, start: int):
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
