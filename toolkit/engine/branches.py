"""A run's branches: going back to an earlier checkpoint starts a new branch of the run.

Resuming from a checkpoint older than the run's newest one moves every later checkpoint of the
current branch (epoch and stop checkpoints, with their validation files) into
`CKPT/PREFIX.abandoned-YYYYmmddTHHMMSSZ/` (UTC, when it was abandoned): nothing is overwritten, a
plain resume continues the current branch (the newest checkpoint left in CKPT/), and `--keep-last`
counts the current branch only. Each such folder is a checkpoints folder of its own:
`tools/resume.py --checkpoints-dir CKPT/PREFIX.abandoned-.../` continues that branch there.
"""
import datetime
import glob
import math
import os
from typing import List, Optional, Tuple

import torch

from toolkit.atomic import signals_held
from toolkit.engine import checkpoint
from toolkit.errors import UserError

ABANDONED = ".abandoned-"


def later_checkpoints(directory: str, prefix: str, position: Tuple[int, int]) -> List[str]:
    """The current branch's checkpoints after `position` (completed epochs, batch)."""
    found = checkpoint.list_checkpoints(directory, prefix).get(prefix, {})
    keys = checkpoint.ordered(found)
    if position in found:
        return [found[k] for k in keys[keys.index(position) + 1:]]
    return [found[k] for k in keys if k > position]


def start_branch(directory: str, prefix: str, position: Tuple[int, int], now=None) -> Optional[str]:
    """Move the checkpoints after `position` into a new PREFIX.abandoned-TIME folder; return the
    folder (None when `position` is the newest: no branch). Renames only, on one file system."""
    later = later_checkpoints(directory, prefix, position)
    if not later:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    base = os.path.join(directory, prefix + ABANDONED + now.strftime("%Y%m%dT%H%M%SZ"))
    folder, n = base, 1
    while os.path.exists(folder):  # two branches in one second
        n += 1
        folder = f"{base}-{n}"
    os.makedirs(folder)
    with signals_held():  # a stop signal (exit at once before training) waits for the last rename
        for path in later:
            for src in (path, checkpoint.val_path(path)):
                if os.path.exists(src):
                    os.replace(src, os.path.join(folder, os.path.basename(src)))
    return folder


def branch_folders(directory: str, prefix: str) -> List[str]:
    """The abandoned branches of a run, oldest first."""
    return sorted(p for p in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix + ABANDONED) + "*"))
                  if os.path.isdir(p))


def _lr(state: dict) -> float:
    if "lr" in state:
        return float(state["lr"])
    try:  # checkpoints written before the LR was stored: the schedule at its position
        from toolkit.engine.config import from_dict
        from toolkit.engine.lr import get_lr
        return get_lr(from_dict(state["config"]), float(state["position"]))
    except (KeyError, TypeError, ValueError, UserError):
        return math.nan


def describe(path: str) -> dict:
    """One row of `tools/resume.py --list`: reads the checkpoint memory-mapped (no full load)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # listed anyway: the user sees which file is bad
        return {"epoch": math.nan, "batch": math.nan, "lr": math.nan, "val-accuracy": math.nan,
                "file": os.path.basename(path) + f"  (unreadable: {type(exc).__name__})"}
    val = checkpoint.load_validation(path) or {}
    pending = checkpoint.pending_validation(path, state) is not None
    return {"epoch": state.get("epoch"), "batch": state.get("batch", 0), "lr": _lr(state),
            "val-accuracy": "pending" if pending else val.get("accuracy", math.nan),
            "file": os.path.basename(path)}


def table(directory: str, prefix: str) -> List[dict]:
    found = checkpoint.list_checkpoints(directory, prefix).get(prefix, {})
    return [describe(found[k]) for k in checkpoint.ordered(found)]


def _cell(v, fmt: str = "{:.5g}") -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v) if isinstance(v, float) else str(v)


def _format(rows: List[dict]) -> str:
    if not rows:
        return "  (no checkpoints)"
    cols = ["epoch", "batch", "lr", "val-accuracy", "file"]
    cells = [cols] + [[_cell(r["epoch"]), _cell(r["batch"]), _cell(r["lr"]),
                       _cell(r["val-accuracy"], "{:.4f}"), r["file"]] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def listing(directory: str, prefix: Optional[str]) -> str:
    """The text of `tools/resume.py --list`: the current branch, then each abandoned one."""
    runs = checkpoint.list_checkpoints(directory, prefix)
    prefixes = [prefix] if prefix else sorted(runs)
    if not prefixes or (prefix and not runs and not branch_folders(directory, prefix)):
        where = f"for prefix {prefix!r} " if prefix else ""
        raise UserError(f"no checkpoints {where}in {directory}/ (train first with tools/train.py, "
                        "or point --checkpoints-dir at them)")
    out = []
    for p in prefixes:
        out += [f"run {p}, current branch ({directory}/; a plain tools/resume.py continues from its "
                "last row):", _format(table(directory, p))]
        for folder in branch_folders(directory, p):
            out += [f"abandoned branch {folder}/ (resume it with --checkpoints-dir {folder}):",
                    _format(table(folder, p))]
    return "\n".join(out)
