#!/usr/bin/env python3
"""Continue a stopped run from its checkpoint, optionally with a new learning rate.

    tools/resume.py --epoch 30 --lr 1e-3          # from checkpoints/PREFIX-0030.pt, next is Epoch[30]
    tools/resume.py                               # from the newest checkpoint (a Ctrl-C one included)
    tools/resume.py --list                        # each branch's checkpoints: epoch, batch, LR, val accuracy
    torchrun --nproc_per_node=8 tools/resume.py --prefix resnet50 --epochs 120

The prefix may be left out when the checkpoints folder holds one run. Other training flags override
the checkpoint's configuration; a new --lr is constant from here unless --lr-schedule is also given.
Resuming from an epoch before the newest checkpoint starts a new branch: the later checkpoints move
to CKPT/PREFIX.abandoned-TIME/ (toolkit/engine/branches.py).
"""
import sys

import click

from toolkit.cli import train_options
from toolkit.rules import rule
from toolkit.training import resume


@click.command(context_settings={"max_content_width": 100})
@click.option("--epoch", "--load-epoch", "epoch", type=rule("epoch").click_type(), default=None,
              help="Resume from PREFIX-NNNN.pt (completed epochs; MXNet: --load-epoch); "
                   "default: the newest checkpoint.")
@click.option("--list", "show", is_flag=True,
              help="List the run's checkpoints, branch by branch (epoch, batch, LR, validation accuracy).")
@train_options
def main(epoch, show, prefix, checkpoints_dir, lr, **overrides):
    if show:
        from toolkit.engine.branches import listing
        click.echo(listing(checkpoints_dir or "checkpoints", prefix))
        return
    sys.exit(resume(checkpoints_dir or "checkpoints", prefix, epoch, lr, **overrides))


if __name__ == "__main__":
    main()
