"""Checkpoints: `CKPT/PREFIX-%04d.pt` after each epoch (numbered by completed epochs, MXNet's
convention), `CKPT/PREFIX-%04d-b%06d.pt` when a run is stopped in the middle of an epoch (completed
epochs, then batches done of the next one; more digits where the numbers need them). Written by
rank 0 to a temp name and renamed; a dict loadable with `torch.load(path, weights_only=True)`.

An epoch checkpoint is written before that epoch's validation pass; the pass's figures go beside
it in `PREFIX-%04d.val.json` when it completes. A checkpoint that says a validation follows it
(`val_epoch`) and has no such file had its pass cut short by a stop: a resume runs it again.
Older branches of a run live in sub-folders (toolkit/engine/branches.py).
"""
import contextlib
import glob
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

import torch

from toolkit.atomic import atomic_open, atomic_path
from toolkit.errors import UserError

VERSION = 1
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4,})(?:-b(?P<batch>\d{6,}))?\.pt$")


def checkpoint_path(directory: str, prefix: str, epoch: int, batch: int = 0) -> str:
    name = f"{prefix}-{epoch:04d}" + (f"-b{batch:06d}" if batch else "") + ".pt"
    return os.path.join(directory, name)


def val_path(path: str) -> str:
    """The validation figures beside an epoch checkpoint: PREFIX-0003.pt -> PREFIX-0003.val.json."""
    return path[:-len(".pt")] + ".val.json"


def save_validation(path: str, epoch: int, metrics: dict):
    with atomic_open(val_path(path)) as f:
        json.dump({"epoch": epoch, **metrics}, f)


def load_validation(path: str) -> Optional[dict]:
    try:
        with open(val_path(path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pending_validation(path: str, state: dict) -> Optional[int]:
    """The epoch whose validation pass a stop cut short after `path` was written, else None."""
    epoch = state.get("val_epoch")
    return None if epoch is None or os.path.exists(val_path(path)) else int(epoch)


def bare_state_dict(model: torch.nn.Module) -> dict:
    """The model's own state dict: without DDP's `module.` and torch.compile's `_orig_mod.`."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model.state_dict()


def save(path: str, state: dict):
    """Written under a temp name, fsynced and renamed (that is what keeps a checkpoint whole).
    Without torch's per-record CRC32: it took a third of a VGG-16 write here (tools/benchmark.py
    checkpoint), time a stop has to fit in torchrun's 30 s; torch.load does not need it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        with atomic_path(path) as tmp:
            torch.save({"version": VERSION, **state}, tmp)
    except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as a RuntimeError
        raise write_failed(path, exc) from None
    finally:
        torch.serialization.set_crc32_options(crc)


def write_failed(path: str, exc: Exception) -> UserError:
    """The one line for a checkpoint that could not be written (a full disk, a quota, a lost mount):
    atomic_path has removed the partial file, so the checkpoints on disk are the earlier ones."""
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(exc, OSError):
        why = exc.strerror or str(exc)
    else:  # "[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662": the file came up short
        first = (str(exc).strip().splitlines() or [""])[0]
        why = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)[:200] or type(exc).__name__
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        why += f"; {free / 2 ** 20:.0f} MiB free there" if free < 2 ** 30 else ""
    return UserError(f"{path}: the checkpoint could not be written ({why}); the partial file is removed and "
                     f"the checkpoints already in {folder} are intact: free space there (or use --checkpoints-dir "
                     "on another disk), then continue with tools/resume.py")


def load(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "")  # torch's run to pages
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:200]})") from None


def prefix_of(path: str) -> str:
    """The run a checkpoint file belongs to, by its name: `fork-0001.pt` continues as run `fork`,
    whatever prefix the configuration inside it names (a copied checkpoint is a fork)."""
    m = _NAME.match(os.path.basename(path))
    if not m:
        raise UserError(f"{path}: not a checkpoint name (PREFIX-NNNN.pt or PREFIX-NNNN-bNNNNNN.pt)")
    return m["prefix"]


def list_checkpoints(directory: str, prefix: Optional[str] = None) -> Dict[str, Dict[Tuple[int, int], str]]:
    """{prefix: {(epoch, batch): path}} of the checkpoints in `directory`."""
    out: Dict[str, Dict[Tuple[int, int], str]] = {}
    for path in glob.glob(os.path.join(glob.escape(directory), "*.pt")):
        m = _NAME.match(os.path.basename(path))
        if m and (prefix is None or m["prefix"] == prefix):
            out.setdefault(m["prefix"], {})[(int(m["epoch"]), int(m["batch"] or 0))] = path
    return out


def _position(path: str) -> float:
    """Where a checkpoint stands in epochs (its `position`), read memory-mapped (no full load)."""
    try:
        return float(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["position"])
    except Exception:  # unreadable or without it: oldest of its epoch
        return -1.0


def ordered(found: Dict[Tuple[int, int], str]) -> List[Tuple[int, int]]:
    """The keys of list_checkpoints' {(epoch, batch): path}, oldest first. A stop's batch number is
    in the batches of the run that wrote it: after a resume at another global batch size (more
    GPUs, another --batch-size) two stops of one epoch count in different units, so the stops of
    an epoch that has several are ordered by the position they hold."""
    crowded = {e for e in {e for e, b in found if b} if sum(1 for k in found if k[0] == e and k[1]) > 1}

    def key(k):
        e, b = k
        return (e, 0, 0.0) if not b else (e, 1, _position(found[k]) if e in crowded else b)
    return sorted(found, key=key)


def find(directory: str, prefix: Optional[str], epoch: Optional[int]) -> str:
    """The checkpoint to resume from: PREFIX-%04d.pt for `epoch`, else the newest (a stop included)."""
    runs = list_checkpoints(directory, prefix)
    if not runs:
        where = f"for prefix {prefix!r} " if prefix else ""
        raise UserError(f"no checkpoints {where}in {directory}/ (train first with tools/train.py, "
                        "or point --checkpoints-dir at them)")
    if prefix is None:
        if len(runs) > 1:
            raise UserError(f"{directory}/ holds several runs ({', '.join(sorted(runs))}); choose one with --prefix")
        prefix = next(iter(runs))
    found = runs[prefix]
    if epoch is None:
        return found[ordered(found)[-1]]
    if (epoch, 0) not in found:
        epochs = sorted({e for e, b in found if b == 0})
        stops = sorted(f"{e}+{b} batches" for e, b in found if b)
        raise UserError(f"no checkpoint {checkpoint_path(directory, prefix, epoch)}; epochs saved: "
                        f"{', '.join(map(str, epochs)) or 'none'}"
                        + (f"; interrupted: {', '.join(stops)} (resume without --epoch)" if stops else ""))
    return found[(epoch, 0)]


def prune(directory: str, prefix: str, keep_last: int, current: Tuple[int, int]):
    """With keep_last > 0: keep the newest `keep_last` epoch checkpoints and drop the stop
    checkpoints older than `current`. With 0 (the default) every checkpoint stays."""
    if keep_last <= 0:
        return
    found = list_checkpoints(directory, prefix).get(prefix, {})
    epochs = sorted(k for k in found if k[1] == 0)
    doomed = [k for k in found if k[1] and k < current] + epochs[:-keep_last]
    for k in doomed:
        os.remove(found[k])
        with contextlib.suppress(FileNotFoundError):
            os.remove(val_path(found[k]))
