#!/usr/bin/env python3
"""Train a recipe, under torchrun (any number of processes and nodes) or as one plain process.

    torchrun --nproc_per_node=8 tools/train.py --recipe resnet50 --data data/imagenet
    python tools/train.py --recipe resnet18 --image-size 64 --width 0.25    # the toy dataset
    python tools/train.py --recipe resnet50 --data DATA --init-from torchvision:resnet50 --freeze-epochs 2

Ctrl-C (or SIGTERM) stops every rank at the same step and writes a checkpoint; tools/resume.py
continues from it. Logs: LOGS/PREFIX.log in MXNet's format; checkpoints: CKPT/PREFIX-NNNN.pt.
"""
import sys

import click

from toolkit.cli import model_options, train_options, transfer_options
from toolkit.engine.config import make_config
from toolkit.training import run


@click.command(context_settings={"max_content_width": 100})
@click.option("--recipe", required=True, help="Network and its training defaults (tools/summary.py --recipe).")
@model_options
@train_options
@transfer_options
def main(recipe, **params):
    sys.exit(run(make_config(recipe, **params)))  # flags left unset (None) keep the recipe's values


if __name__ == "__main__":
    main()
