#!/usr/bin/env python3
"""Extract a layer's features over a split, for a linear classifier (tools/train_linear.py).

    tools/extract_features.py --prefix toy_resnet18 --epoch 10 --split train --out feats/train
    torchrun --nproc_per_node=8 tools/extract_features.py --init-from torchvision:resnet50 \\
        --recipe resnet50 --data data/imagenet --split val --out feats/val
    tools/extract_features.py --prefix toy_resnet18 --list-layers     # layer names and output shapes

Writes OUT.npy (images x features, float32, in record order whatever the number of processes),
OUT.labels.npy, OUT.ids.npy (the .lst image ids) and OUT.json. Default layer: the input of the
classifier; spatial outputs are averaged over height and width (--pool none: flattened).
"""
import sys

import click

from toolkit.cli import LOADERS, model_options
from toolkit.rules import rule
from toolkit.transfer.features import run_extraction


@click.command(context_settings={"max_content_width": 100})
@click.option("--prefix", default=None, help="Run name of the checkpoint (may be left out when the folder holds one run).")
@click.option("--epoch", "--load-epoch", "epoch", type=rule("epoch").click_type(), default=None,
              help="Checkpoint PREFIX-NNNN.pt; default: the newest.")
@click.option("--checkpoints-dir", default="checkpoints", show_default=True)
@click.option("--init-from", default=None, metavar="SOURCE",
              help="Instead of a run's checkpoint: a state_dict file or torchvision:NAME (with --recipe), "
                   "or any checkpoint path.")
@click.option("--recipe", default=None, help="The network SOURCE's weights are for (with --init-from).")
@click.option("--data", default=None, help="Dataset folder; default: the one the checkpoint trained on.")
@click.option("--split", default="val", show_default=True, help="Split to extract (train, val, ...).")
@click.option("--layer", default=None, help="Module name (see --list-layers); default: the classifier's input.")
@click.option("--pool", type=click.Choice(["avg", "none"]), default="avg", show_default=True,
              help="Spatial outputs: average over height and width, or flatten.")
@click.option("--out", default=None, help="Output path stem: OUT.npy, OUT.labels.npy, OUT.ids.npy, OUT.json.")
@click.option("--list-layers", is_flag=True, help="Print the layer names and output shapes, and exit.")
@click.option("--batch-size", type=rule("batch_size").click_type(), default=64, show_default=True, help="Images per process.")
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True)
@click.option("--workers", type=rule("workers").click_type(), default=2, show_default=True)
@model_options
def main(**kwargs):
    sys.exit(run_extraction(**kwargs))


if __name__ == "__main__":
    main()
