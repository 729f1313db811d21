#!/usr/bin/env python3
"""Classify image files with a trained checkpoint (or an ensemble): top-k classes and probabilities.

    tools/predict.py --prefix resnet50 --epoch 90 photos/ extra/*.jpg      # folders (recursive), globs
    tools/predict.py --checkpoint checkpoints/resnet50-0090.pt list.lst --csv out.csv --json-file out.json
    tools/predict.py --epoch 90 photo.jpg --quiet --json                  # JSON as the last line
    tools/predict.py --ensemble resnet50:90 vgg16:74 photos/ --ten-crop    # mean softmax of several runs
    torchrun --nproc_per_node=8 tools/predict.py --epoch 90 --split val    # a split's records

Images are decoded and preprocessed exactly as tools/evaluate.py's loader does. A file that does not
decode is one line of the output and the others go on.
"""
import sys

import click

from toolkit.cli import JsonCommand, json_options
from toolkit.inference.ensemble import expand_members
from toolkit.inference.predict import run
from toolkit.rules import rule


@click.command(cls=JsonCommand, context_settings={"max_content_width": 100})
@click.argument("inputs", nargs=-1)
@click.option("--prefix", default=None, help="Run name (may be left out when the folder holds one run).")
@click.option("--epoch", "--load-epoch", "epoch", type=rule("epoch").click_type(), default=None,
              help="Use PREFIX-NNNN.pt; default: the newest checkpoint.")
@click.option("--checkpoint", "checkpoint_path", default=None, help="A checkpoint file (instead of --prefix/--epoch).")
@click.option("--ensemble", multiple=True, metavar="P1:E1 P2:E2 ...",
              help="Mean softmax of these checkpoints (PREFIX:EPOCH or .pt paths).")
@click.option("--checkpoints-dir", default="checkpoints", show_default=True)
@click.option("--split", default=None, help="Predict on this split's records (of --data) instead of files.")
@click.option("--data", default=None, help="Dataset folder: for --split, and for checkpoints older than "
                                           "self-describing ones (classes.tsv, mean/std).")
@click.option("--image-root", "--root", "root", default=None,
              help="Folder the paths of a .lst are relative to (default: the list's).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--csv", "csv_path", default=None, help="Write path, class1, prob1, ... per image to this CSV.")
@click.option("--batch-size", type=rule("batch_size").click_type(), default=64, show_default=True, help="Images per process.")
@click.option("--workers", type=rule("workers").click_type(), default=2, show_default=True, help="Decoding processes.")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over 10 crops (corners, centre, flips).")
@click.option("--amp", type=click.Choice(("auto", "off", "bf16", "fp16")), default="auto", show_default=True,
              help="Mixed precision (auto: bf16 on a GPU, off on the CPU).")
@click.option("--channels-last/--no-channels-last", default=None, help="Default: on a GPU.")
@click.option("--timeout", type=rule("timeout").click_type(), default=300, show_default=True,
              help="Seconds a decoding worker or another rank may stay silent before the run ends with one line.")
@click.option("--quiet", is_flag=True, help="No table on the terminal (the CSV/JSON only).")
@json_options
def main(inputs, **options):
    sys.exit(run(list(inputs), **options))


if __name__ == "__main__":
    main(args=expand_members(sys.argv[1:]))
