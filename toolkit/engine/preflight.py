"""Checks made before the first step, so a mistake is one line and exit 2 instead of a traceback (or
an epoch's work lost) later: output folders writable, the dataset's files readable, the number of
classes settled and every label inside it.

Rank 0 reads; what it finds reaches every rank (a rank that went on alone would wait for the others
in a collective), and only rank 0 prints.
"""
import os
import tempfile

import numpy as np
import torch

from toolkit.data.discovery import check_labels, dataset_info, has_split, header_labels, open_split, split_files
from toolkit.engine import dist
from toolkit.engine.config import TrainConfig, override

DEFAULT_VAL = TrainConfig.val_split  # a dataset without it trains without validation; any other name must exist
from toolkit.errors import UserError


class ReportedElsewhere(UserError):
    """Another rank's problem: rank 0 prints it."""


def on_main(env, fn):
    """fn() on rank 0, its non-negative int result on every rank; a UserError it raises is raised on
    every rank (with its message on rank 0)."""
    value, error = 0, None
    if env.main:
        try:
            value = int(fn() or 0)
        except UserError as exc:
            error = exc
    flags = dist.all_reduce_max(torch.tensor([value, error is not None], dtype=torch.int64, device=env.device))
    if error is not None:
        raise error
    if flags[1].item():
        raise ReportedElsewhere("rank 0 found a problem (printed there)")
    return int(flags[0].item())


def writable_dir(path: str, flag: str):
    """Make `path` if needed and write a file in it; a UserError naming the flag if that fails."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); "
                        f"choose a writable folder with {flag}") from None


def writable_file(path: str, flag: str):
    """`path` can be written as a file (its folder made if needed); a UserError naming the flag if not."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder; give a file name (e.g. {os.path.join(path, 'out')})")
    writable_dir(os.path.dirname(path) or ".", flag)


def not_an_input(path: str, flag: str, inputs):
    """An output file must not be one of the tool's inputs (it would be read, then written over)."""
    if not os.path.exists(path):
        return
    real = os.path.realpath(path)
    same = next((p for p in inputs if os.path.realpath(p) == real), None)
    if same is not None:
        raise UserError(f"{flag} {path}: is one of the inputs ({same}) and would be written over; "
                        f"give {flag} another file name")


def check_output_dirs(cfg: TrainConfig, env):
    """--logs-dir and --checkpoints-dir, before the log is opened: rank 0 writes both."""
    def check():
        writable_dir(cfg.logs_dir, "--logs-dir")
        writable_dir(cfg.checkpoints_dir, "--checkpoints-dir")
    on_main(env, check)


def settle_num_classes(cfg: TrainConfig, env, log) -> TrainConfig:
    """The number of classes (the flag, else classes.tsv, else max label + 1 of the train split,
    logged), with every train and val label checked against it before the model is built."""
    info = dataset_info(cfg.data)  # every rank reads the mean/std file: a malformed one stops all here
    if cfg.num_classes and info.num_classes and cfg.num_classes < info.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes}: {cfg.data}/classes.tsv lists {info.num_classes} "
                        "classes; leave the flag out to use them all")
    derived = []

    def count_and_check():
        check_val_split(cfg)
        train = open_split(cfg.data, cfg.train_split)
        labels = header_labels(train)
        n = cfg.num_classes or info.num_classes
        if not n:
            finite = labels[np.isfinite(labels)]
            n = max(int(finite.max()) + 1 if len(finite) else 1, 1)
            derived.append(n)
        check_labels(train, n, labels, fix=_fix(cfg, info, n, labels))
        if has_split(cfg.data, cfg.val_split):
            val = open_split(cfg.data, cfg.val_split)
            val_labels = header_labels(val)
            check_labels(val, n, val_labels, fix=_fix(cfg, info, n, val_labels, cfg.val_split))
        return n

    n = on_main(env, count_and_check)
    if derived:
        log.info(f"{cfg.data} has no classes.tsv: {n} classes, from the largest label of split "
                 f"{cfg.train_split!r} + 1 (--num-classes N to set it)")
    return override(cfg, num_classes=n)


def check_val_split(cfg: TrainConfig):
    """A --val-split the dataset lacks is a typo (a run would train without validation and end
    with status 0); only the default name may be absent."""
    if cfg.val_split != DEFAULT_VAL and not has_split(cfg.data, cfg.val_split):
        try:
            split_files(cfg.data, cfg.val_split)
        except UserError as exc:
            raise UserError(f"--val-split {cfg.val_split}: {exc.message}") from None


def check_eval_labels(data: str, split: str, num_classes: int, checkpoint: str, env):
    """tools/evaluate.py: every label of the split inside the model's classes."""
    def check():
        records = open_split(data, split)
        check_labels(records, num_classes, fix=f"{checkpoint} was trained for {num_classes} classes; "
                     "evaluate it on the dataset it was trained on (--data), or fix the labels")
    on_main(env, check)


def _fix(cfg, info, n, labels, split=None) -> str:
    finite = labels[np.isfinite(labels)]
    top = int(finite.max()) if len(finite) else 0
    if not len(finite) or finite.min() < 0 or (finite != np.floor(finite)).any():
        return ("labels are class numbers 0, 1, 2, ...: make the lists again (tools/im2rec.py --list) "
                "and pack them (tools/im2rec.py)")
    if split:  # the val split has a label the train split (or classes.tsv, or the flag) lacks
        return (f"split {split!r} has labels the {n} classes of the run lack: pass --num-classes {top + 1}, "
                f"or make the {split} list with the train list's labels")
    if cfg.num_classes:
        return f"pass --num-classes {top + 1} (or more), or fix the labels"
    return (f"{cfg.data}/classes.tsv lists {info.num_classes} classes: pass --num-classes {top + 1}, "
            "or make classes.tsv and the lists again (tools/im2rec.py --list)")
