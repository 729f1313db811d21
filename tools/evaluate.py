#!/usr/bin/env python3
"""Evaluate a checkpoint: rank-1/rank-5 accuracy (exact across ranks), per-class P/R/F1, confusion CSV.

    tools/evaluate.py --epoch 30                          # checkpoints/PREFIX-0030.pt on its val split
    torchrun --nproc_per_node=8 tools/evaluate.py --prefix resnet50 --epoch 90 --ten-crop --json
    tools/evaluate.py --ensemble resnet50:90 vgg16:74     # mean softmax of several runs, one table
"""
import sys

import click

from toolkit.cli import LOADERS, JsonCommand, json_options
from toolkit.engine.evaluation import run_evaluation
from toolkit.errors import UserError
from toolkit.inference.ensemble import expand_members, run_ensemble_evaluation
from toolkit.rules import rule


@click.command(cls=JsonCommand, context_settings={"max_content_width": 100})
@click.option("--prefix", default=None, help="Run name (may be left out when the folder holds one run).")
@click.option("--epoch", "--load-epoch", "epoch", type=rule("epoch").click_type(), default=None,
              help="Evaluate PREFIX-NNNN.pt; default: the newest checkpoint.")
@click.option("--ensemble", multiple=True, metavar="P1:E1 P2:E2 ...",
              help="Evaluate the mean softmax of these checkpoints (PREFIX:EPOCH or a .pt path), "
                   "each member's and the ensemble's accuracy in one table.")
@click.option("--checkpoints-dir", default="checkpoints", show_default=True)
@click.option("--data", default=None, help="Dataset folder; default: the one the run trained on.")
@click.option("--split", default="val", show_default=True, help="Split to evaluate (val, test, ...).")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over 10 crops (corners, centre, flips).")
@click.option("--batch-size", type=rule("batch_size").click_type(), default=None, help="Images per process.")
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True)
@click.option("--workers", type=rule("workers").click_type(), default=2, show_default=True)
@click.option("--timeout", type=rule("timeout").click_type(), default=300, show_default=True,
              help="Seconds a loader worker or another rank may stay silent before the run ends with one line.")
@click.option("--out-dir", default=None, help="Where the CSVs go; default: the run's logs folder.")
@json_options
def main(ensemble, prefix, epoch, **kwargs):
    if ensemble:
        if prefix or epoch is not None:
            raise UserError("--ensemble names its models itself (PREFIX:EPOCH ...); leave out --prefix and --epoch")
        sys.exit(run_ensemble_evaluation(list(ensemble), **kwargs))
    sys.exit(run_evaluation(prefix=prefix, epoch=epoch, **kwargs))


if __name__ == "__main__":
    main(args=expand_members(sys.argv[1:], positional=False))
