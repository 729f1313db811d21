"""`tools/benchmark.py checkpoint`: how long a stop checkpoint takes to write (the time a rank
needs, after a Ctrl-C, inside torchrun's `--shutdown-timeout`), against writing the same tensors'
bytes raw, in one invocation.

The state is what the trainer writes: the model's state_dict and SGD's momentum buffers (one per
parameter), plus the small entries; written by `toolkit.engine.checkpoint.save` (temp name,
fsync, rename). The baseline writes every tensor's bytes to one file with fsync: the disk's own
cost. Rounds are interleaved (ours, raw, ours, ...) so that machine load falls on both alike.
"""
import json
import os
import statistics
import tempfile
import time

import click
import torch

from toolkit.engine import checkpoint
from toolkit.registry import build_model


def trainer_state(recipe: str) -> dict:
    torch.manual_seed(0)
    model = build_model(recipe, num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # fills one momentum buffer per parameter
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {},
            "epoch": 30, "batch": 1234567, "step": 1, "position": 30.5, "lr": 0.01, "val_epoch": None,
            "config": {"recipe": recipe}, "world_size": 8, "batch_size": 32, "train_sums": [0.0] * 4}


def _tensors(state: dict):
    yield from state["model"].values()
    for s in state["optimizer"]["state"].values():
        yield from (v for v in s.values() if torch.is_tensor(v))


def _raw_write(path: str, state: dict) -> float:
    t = time.perf_counter()
    with open(path, "wb") as f:
        for v in _tensors(state):
            f.write(v.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
    took = time.perf_counter() - t
    os.remove(path)
    return took


def _save(path: str, state: dict) -> float:
    t = time.perf_counter()
    checkpoint.save(path, state)
    took = time.perf_counter() - t
    os.remove(path)
    return took


@click.command()
@click.option("--recipe", "recipes", multiple=True, default=("resnet50", "vgg16"), show_default=True)
@click.option("--dir", "directory", default=".", show_default=True,
              help="Folder to write in (the checkpoints' file system).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object.")
def cli(recipes, directory, rounds, as_json):
    """Checkpoint write time (model + SGD momentum) against a raw write of the same bytes."""
    results = {}
    for recipe in recipes:
        state = trainer_state(recipe)
        size = sum(v.numel() * v.element_size() for v in _tensors(state))
        ours, raw = [], []
        with tempfile.TemporaryDirectory(dir=directory, prefix=".ckpt-bench-") as tmp:
            for _ in range(rounds):
                ours.append(_save(os.path.join(tmp, "r-0030-b1234567.pt"), state))
                raw.append(_raw_write(os.path.join(tmp, "raw.bin"), state))
        o, r = statistics.median(ours), statistics.median(raw)
        results[recipe] = {"mb": size / 1e6, "save_s": o, "raw_s": r, "ratio": o / r,
                           "save_all_s": ours, "raw_all_s": raw}
        click.echo(f"{recipe}: {size / 1e6:.0f} MB (model + momentum); checkpoint.save {o:.2f} s "
                   f"(median of {rounds}: {', '.join(f'{x:.2f}' for x in ours)}), raw write + fsync "
                   f"{r:.2f} s ({', '.join(f'{x:.2f}' for x in raw)}); ratio {o / r:.2f}")
        del state
    if as_json:
        click.echo(json.dumps(results))
