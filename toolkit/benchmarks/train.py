"""`tools/benchmark.py train`: images/s of the engine's training step (Trainer.train_one_epoch: LR
per step, dropout reseeding, metric sums, the stop/NaN all-reduce, Speedometer) against a bare PyTorch
loop (zero_grad, forward, loss, backward, step) on the same model, optimizer and in-memory batches
(`--compile`: both torch.compile'd; the warm-up round compiles).

The two alternate in rounds within one process, so machine noise hits both; the figure is the ratio
of their median rounds.
"""
import json
import logging
import statistics
import time

import click
import torch
import torch.nn as nn

from toolkit.engine import dist
from toolkit.engine.config import make_config
from toolkit.engine.model import prepare_model
from toolkit.engine.step import autocast
from toolkit.engine.trainer import Trainer
from toolkit.engine.optim import build_optimizer


class SyntheticLoader:
    """The loader contract (set_epoch, len, iteration) over a few batches held in memory."""
    backend = "synthetic"

    def __init__(self, batches, steps):
        self.batches, self.steps = batches, steps

    def set_epoch(self, epoch, start=0):
        self.start = start

    def __len__(self):
        return self.steps

    def __iter__(self):
        for i in range(self.start, self.steps):
            yield self.batches[i % len(self.batches)]


def make_batches(cfg, device, n=4):
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return [(torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
             .contiguous(memory_format=fmt),
             torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(device)) for _ in range(n)]


def bare_loop(cfg, env, batches, steps):
    """What a user would write by hand: the baseline."""
    model = prepare_model(cfg, env)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp == "fp16")
    criterion = nn.CrossEntropyLoss()
    net = torch.compile(model) if cfg.compile else model  # as the Trainer does with --compile

    def run():
        for i in range(steps):
            x, y = batches[i % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            with autocast(env, cfg.amp):
                out = net(x)
                loss = criterion(out[0] if isinstance(out, tuple) else out, y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss.item()
    return run


def engine_loop(cfg, env, batches, steps):
    log = logging.getLogger("toolkit.benchmark")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    trainer = Trainer(cfg, env, log, loaders=(SyntheticLoader(batches, steps), None))
    epoch = [0]

    def run():
        trainer.train_one_epoch(epoch[0])
        epoch[0] += 1
    return run


def sync(env):
    if env.device.type == "cuda":
        torch.cuda.synchronize()


@click.command()
@click.option("--recipe", default="resnet18", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=112, show_default=True)
@click.option("--width", type=float, default=None, help="Width multiplier of the recipe.")
@click.option("--steps", type=click.IntRange(min=2), default=10, show_default=True, help="Steps per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True)
@click.option("--channels-last", is_flag=True)
@click.option("--compile", "compiled", is_flag=True, help="torch.compile the model in both loops.")
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def cli(recipe, batch_size, image_size, width, steps, rounds, amp, channels_last, compiled, as_json):
    """Images/s of our training step against a bare PyTorch loop, same invocation."""
    env = dist.setup()
    cfg = make_config(recipe, batch_size=batch_size, image_size=image_size, width=width, num_classes=1000,
                      amp=amp, channels_last=channels_last, compile=compiled, lr=0.01, data="synthetic",
                      log_every=20)
    batches = make_batches(cfg, env.device)
    loops = {"bare": bare_loop(cfg, env, batches, steps), "engine": engine_loop(cfg, env, batches, steps)}
    for run in loops.values():  # warm-up: allocator, kernels, thread pools (and compilation)
        run()
    times = {name: [] for name in loops}
    for r in range(rounds):
        for name in (loops if r % 2 == 0 else list(reversed(loops))):
            sync(env)
            t = time.perf_counter()
            loops[name]()
            sync(env)
            times[name].append(time.perf_counter() - t)
    rate = {name: steps * batch_size / statistics.median(ts) for name, ts in times.items()}
    device = torch.cuda.get_device_name() if env.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"recipe": recipe, "batch_size": batch_size, "image_size": image_size, "amp": amp,
              "channels_last": channels_last, "compile": compiled, "device": device,
              "bare_images_per_sec": round(rate["bare"], 2),
              "engine_images_per_sec": round(rate["engine"], 2),
              "ratio_engine_vs_bare": round(rate["engine"] / rate["bare"], 4)}
    print(f"{recipe} batch {batch_size} at {image_size}px on {device}: bare loop {rate['bare']:.1f} img/s, "
          f"engine {rate['engine']:.1f} img/s, engine/bare {result['ratio_engine_vs_bare']:.3f}")
    if as_json:
        print(json.dumps(result))
