"""The ILSVRC-2012 devkit (`ILSVRC2012_devkit_t12.tar.gz`) and Kaggle's label files.

meta.mat's `synsets` struct array (fields ILSVRC2012_ID, WNID, words, gloss, num_children, ...)
lists 1860 synsets: IDs 1..1000 are the leaves (the train classes), the rest internal nodes. The
validation ground truth holds one ILSVRC2012_ID per image, image k on line k. scipy reads meta.mat.
"""
import csv
import dataclasses
import io
import os
import tarfile
from typing import Dict, List, Optional

from toolkit.errors import UserError

META = "meta.mat"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


@dataclasses.dataclass
class Devkit:
    path: str
    id_wnids: List[str]                  # line k-1: the wnid of ILSVRC2012_ID k (every synset)
    words: Dict[str, str]                # wnid -> words
    leaves: List[str]                    # the wnids without children (the train classes), by ID
    ground_truth: Optional[List[int]] = None   # ILSVRC2012_ID of validation image k at k-1


def is_devkit_file(path: str) -> bool:
    return path.endswith((".mat", ".tar.gz", ".tgz", ".tar"))


def read_meta(data: bytes, where: str):
    """(id_wnids, words, leaves) of meta.mat's bytes."""
    import scipy.io  # only here: a second of import for the tools that never read a devkit
    try:
        synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        ids = [int(v) for v in synsets["ILSVRC2012_ID"]]
        wnids = [str(v) for v in synsets["WNID"]]
        words = [str(v) for v in synsets["words"]]
        children = [int(v) for v in synsets["num_children"]]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UserError(f"{where}: not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, WNID, "
                        f"words, num_children): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise UserError(f"{where}: ILSVRC2012_IDs are not 1..{len(ids)}")
    by_id = sorted(zip(ids, wnids, words, children))
    return ([w for _, w, _, _ in by_id], {w: t for _, w, t, _ in by_id},
            [w for _, w, _, c in by_id if c == 0])


def _read_ids(text: str, where: str) -> List[int]:
    try:
        return [int(x) for x in text.split()]
    except ValueError as exc:
        raise UserError(f"{where}: expected one ILSVRC2012_ID (an integer) per line ({exc})") from None


def load_devkit(path: str) -> Devkit:
    """The devkit tarball (meta.mat and the validation ground truth) or meta.mat alone."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: devkit not found (ILSVRC2012_devkit_t12.tar.gz or its data/meta.mat)")
    if path.endswith(".mat"):
        with open(path, "rb") as f:
            return Devkit(path, *read_meta(f.read(), path))
    try:
        with tarfile.open(path) as tar:
            found = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            if META not in found:
                raise UserError(f"{path}: no data/{META} inside: is this ILSVRC2012_devkit_t12.tar.gz?")
            kit = Devkit(path, *read_meta(tar.extractfile(found[META]).read(), f"{path}:{found[META].name}"))
            if GROUND_TRUTH in found:
                kit.ground_truth = _read_ids(tar.extractfile(found[GROUND_TRUTH]).read().decode(),
                                             f"{path}:{found[GROUND_TRUTH].name}")
            return kit
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{path}: not a readable tar file ({exc})") from None


def read_ground_truth(path: str) -> List[int]:
    with open(path) as f:
        return _read_ids(f.read(), path)


def val_wnids_from_devkit(kit: Devkit) -> List[str]:
    """The wnid of each validation image (ILSVRC2012_val_%08d k at k-1)."""
    if kit.ground_truth is None:
        raise UserError(f"{kit.path}: no data/{GROUND_TRUTH}: give the devkit tarball, not meta.mat alone")
    ids = kit.ground_truth
    if ids and not 1 <= min(ids) <= max(ids) <= len(kit.id_wnids):
        raise UserError(f"{kit.path}: ground-truth IDs run {min(ids)}..{max(ids)} but meta.mat lists "
                        f"{len(kit.id_wnids)} synsets")
    return [kit.id_wnids[k - 1] for k in ids]


def read_kaggle_solution(path: str) -> Dict[str, str]:
    """LOC_val_solution.csv (`ImageId,PredictionString`, the string's first word the wnid)."""
    out = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        if header[:2] != ["ImageId", "PredictionString"]:
            raise UserError(f"{path}: expected Kaggle's header 'ImageId,PredictionString', got {','.join(header)!r}")
        for lineno, row in enumerate(rows, 2):
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{path}:{lineno}: expected 'ILSVRC2012_val_N,nXXXXXXXX x y x y ...'")
            out[row[0]] = row[1].split()[0]
    return out
