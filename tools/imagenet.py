#!/usr/bin/env python3
"""ILSVRC-2012 from its downloads in one command, and the check of a prepared set.

    tools/imagenet.py prepare --train ILSVRC2012_img_train.tar --val ILSVRC2012_img_val.tar \\
        --devkit ILSVRC2012_devkit_t12.tar.gz --out data/imagenet --resize 256 --num-thread 16 --num-shards 8
    tools/imagenet.py prepare --kaggle imagenet-object-localization-challenge --out data/imagenet
    tools/imagenet.py check data/imagenet --devkit ILSVRC2012_devkit_t12.tar.gz
"""
import os
import sys

import click

from toolkit import im2rec
from toolkit.errors import UserError
from toolkit.imagenet import prepare as preparing

PACK_FLAGS = [
    click.option("--resize", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Shorter side to this many pixels (0: keep), as tools/im2rec.py."),
    click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality."),
    click.option("--pass-through", is_flag=True,
                 help="Store the JPEG bytes unchanged (the odd files are still stored as RGB JPEGs)."),
    click.option("--num-shards", type=click.IntRange(min=1), default=16, show_default=True,
                 help="Train record shards (the unit of work a Ctrl-C loses); val is one file."),
    click.option("--num-thread", type=click.IntRange(min=1), default=len(os.sched_getaffinity(0)),
                 help="Packing processes (default: the cores this process may use); the output does not depend on it."),
]


def pack_flags(fn):
    for opt in reversed(PACK_FLAGS):
        fn = opt(fn)
    return fn


@click.group(context_settings={"max_content_width": 100})
def main():
    """ImageNet (ILSVRC-2012): prepare record files from the downloads, check a prepared set."""


@main.command()
@click.option("--train", help="ILSVRC2012_img_train.tar, or the folder of unpacked synset folders.")
@click.option("--val", help="ILSVRC2012_img_val.tar, or the folder of the 50,000 validation JPEGs.")
@click.option("--devkit", help="ILSVRC2012_devkit_t12.tar.gz (validation labels, class words).")
@click.option("--kaggle", help="Kaggle's download folder (ILSVRC/Data/CLS-LOC, LOC_val_solution.csv, "
                               "LOC_synset_mapping.txt), instead of --train/--val.")
@click.option("--out", "--out-dir", "out", required=True,
              help="Dataset folder to write (the same command continues it).")
@pack_flags
def prepare(train, val, devkit, kaggle, out, resize, quality, pass_through, num_shards, num_thread):
    """Lists, classes.tsv, records and mean/std from the downloads: no image written to disk;
    Ctrl-C and the same command again continues with the first unfinished shard."""
    opts = im2rec.PackOptions(resize=resize, quality=quality, pass_through=pass_through,
                              num_thread=num_thread, num_shards=num_shards)
    preparing.check_flags(out, opts)
    try:
        plan = preparing.plan(train, val, devkit, kaggle, out)
        summary = preparing.prepare(plan, opts)
    except KeyboardInterrupt:
        im2rec.interrupted_exit(f"\ninterrupted: the finished shards are kept (recorded in {out}/"
                                f"{preparing.STATE}); run the same command to continue")
    click.echo(f"{out}: {len(plan.classes)} classes")
    for name, s in summary.items():
        odd = ", ".join(f"{n} {preparing.KIND_NAMES.get(k, k)}" for k, n in sorted(s["kinds"].items())) or "none"
        click.echo(f"  {name}: {s['records']} records of {s['images']} images in {s['shards']} file(s); "
                   f"odd files stored as RGB JPEGs: {odd}; {len(s['skipped'])} undecodable, skipped")
        for w in s["skipped"]:
            click.echo("    " + w.replace("warning: skipping unreadable image ", "skipped: "))


@main.command()
@click.argument("data")
@click.option("--devkit", help="Also check the labels against ILSVRC2012_devkit_t12.tar.gz.")
@click.option("--classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--train-count", type=click.IntRange(min=0), default=1281167, show_default=True)
@click.option("--val-count", type=click.IntRange(min=0), default=50000, show_default=True)
@click.option("--num-thread", type=click.IntRange(min=1), default=len(os.sched_getaffinity(0)),
              help="Default: the cores this process may use.")
def check(data, devkit, classes, train_count, val_count, num_thread):
    """Verify a prepared set: class and record counts, every record decoded, labels."""
    from toolkit.imagenet import check as checking  # torch, for the decode: only here
    problems = checking.check(data, classes, {preparing.TRAIN: train_count, preparing.VAL: val_count},
                              devkit, num_thread)
    for p in problems:
        click.echo(f"  problem: {p}")
    if problems:
        raise UserError(f"{data}: {len(problems)} problem(s) (listed above)")
    click.echo(f"{data}: OK")


if __name__ == "__main__":
    main()
