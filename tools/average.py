#!/usr/bin/env python3
"""Average the weights of a run's last K epoch checkpoints and recompute BatchNorm statistics on the
training data; writes an ordinary checkpoint (default prefix PREFIX-avgK, numbered as the last epoch).

    tools/average.py --prefix resnet50 --last 5       # -> checkpoints/resnet50-avg5-0090.pt
    tools/evaluate.py --prefix resnet50-avg5          # evaluate, predict, export or resume it as any run
"""
import sys

import click

from toolkit.inference.average import run_average
from toolkit.rules import rule


@click.command(context_settings={"max_content_width": 100})
@click.option("--prefix", default=None, help="Run name (may be left out when the folder holds one run).")
@click.option("--last", type=click.IntRange(min=2), default=5, show_default=True,
              help="Average the newest K epoch checkpoints.")
@click.option("--checkpoints-dir", default="checkpoints", show_default=True)
@click.option("--out-prefix", default=None, help="Prefix of the averaged checkpoint; default PREFIX-avgK.")
@click.option("--data", default=None, help="Dataset folder; default: the one the run trained on.")
@click.option("--bn-batches", type=click.IntRange(min=1), default=None,
              help="Batches of the BatchNorm pass; default: one epoch of the training split.")
@click.option("--batch-size", type=rule("batch_size").click_type(), default=None, help="Default: the run's.")
@click.option("--workers", type=rule("workers").click_type(), default=None, help="Default: the run's.")
def main(**kwargs):
    run_average(**kwargs)
    sys.exit(0)


if __name__ == "__main__":
    main()
