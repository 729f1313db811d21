"""The three routes to ImageNet's images, each giving the same lists: the download's tar files read
in place (the train tar's per-synset tars too: headers only, each image later read at its offset),
the unpacked folders, and Kaggle's layout. Train: sorted wnids, sorted names (the order of
`tools/im2rec.py --list --recursive --no-shuffle`), labels 0..N-1 in sorted-wnid order; val: sorted
ILSVRC2012_val_N names, labels from the devkit's ground truth through meta.mat, or Kaggle's CSV."""
import dataclasses
import os
import re
import sys
import tarfile
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from toolkit import lists
from toolkit.errors import UserError
from toolkit.imagenet import devkit as dk

WNID = re.compile(r"n\d{8}$")


@dataclasses.dataclass
class Split:
    paths: List[str]                 # relative paths (the .lst's), in list order
    wnids: List[str]                 # the class of each image
    src: str                         # the folder or the tar file the paths are in
    spans: Optional[List[Tuple[int, int]]] = None  # (offset, size) of each image in the tar file

    def job_source(self, i: int):
        return self.src if self.spans is None else (self.src, *self.spans[i])


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in lists.DEFAULT_EXTS


def _open_tar(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # seekable: skipping a member reads its header only
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path}: not an uncompressed tar file ({exc}); ImageNet's are plain .tar") from None


def _images(tar: tarfile.TarFile, base: int = 0):
    """(name, absolute offset, size) of each image file in `tar` (`base`: its offset in the file)."""
    for m in tar:
        if m.isfile() and _is_image(m.name):
            yield os.path.basename(m.name), base + m.offset_data, m.size


def train_from_tar(path: str) -> Split:
    """ILSVRC2012_img_train.tar: one nXXXXXXXX.tar per synset, each holding that synset's JPEGs."""
    found: Dict[str, List[Tuple[str, int, int]]] = {}
    with _open_tar(path) as outer, tqdm(unit=" synsets", desc="reading the train tar's headers",
                                        disable=None, file=sys.stderr) as bar:
        for m in outer:
            bar.update()
            wnid = os.path.basename(m.name)[:-4]
            if not (m.isfile() and m.name.endswith(".tar") and WNID.match(wnid)):
                raise UserError(f"{path}: member {m.name!r} is not a per-synset tar (n01440764.tar): "
                                "is this ILSVRC2012_img_train.tar? (--train takes it or the unpacked folder)")
            try:
                with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:
                    found[wnid] = sorted(_images(inner, m.offset_data))
            except tarfile.TarError as exc:
                raise UserError(f"{path}: member {m.name} is not a tar file ({exc})") from None
    return _train_split(path, found)


def train_from_folder(root: str) -> Split:
    found = {}
    for wnid in sorted(os.listdir(root)):
        sub = os.path.join(root, wnid)
        if os.path.isdir(sub):
            found[wnid] = sorted((f, 0, 0) for f in os.listdir(sub)
                                 if _is_image(f) and os.path.isfile(os.path.join(sub, f)))
    found = {w: v for w, v in found.items() if v}  # an empty or hidden folder is no class
    if not all(WNID.match(w) for w in found):
        bad = next(w for w in found if not WNID.match(w))
        raise UserError(f"{root}: folder {bad!r} is not a synset (n01440764): --train takes the folder "
                        "holding one folder per synset")
    split = _train_split(root, found)
    split.spans = None
    return split


def _train_split(where: str, found) -> Split:
    found = {w: v for w, v in found.items() if v}
    if not found:
        raise UserError(f"{where}: no images in synset folders or tars (n01440764/*.JPEG)")
    rows = [(w, f"{w}/{name}", off, size) for w in sorted(found) for name, off, size in found[w]]
    return Split([r[1] for r in rows], [r[0] for r in rows], where, [(r[2], r[3]) for r in rows])


def val_from_tar(path: str) -> Split:
    with _open_tar(path) as tar:
        rows = sorted(_images(tar))
        if not rows or any(os.path.dirname(m.name) for m in tar.getmembers() if m.isfile()):
            raise UserError(f"{path}: {'holds folders' if rows else 'no images'}: is this ILSVRC2012_img_val.tar "
                            "(50,000 JPEGs, no folders)? (--val takes it or the unpacked folder)")
    return Split([r[0] for r in rows], [], path, [(r[1], r[2]) for r in rows])


def val_from_folder(root: str) -> Split:
    names = sorted(f for f in os.listdir(root) if _is_image(f) and os.path.isfile(os.path.join(root, f)))
    return Split(names, [], root)


def open_route(path: str, kind: str) -> Split:
    """--train / --val: a tar file or a folder."""
    if os.path.isdir(path):
        return (train_from_folder if kind == "train" else val_from_folder)(path)
    if os.path.isfile(path):
        return (train_from_tar if kind == "train" else val_from_tar)(path)
    raise UserError(f"--{kind} {path}: neither a tar file nor a folder")


def label_val_by_devkit(val: Split, kit: dk.Devkit):
    wnids = dk.val_wnids_from_devkit(kit)
    lists.check_val_numbering(val.paths, len(wnids), val.src, f"{kit.path}'s ground truth")
    val.wnids = wnids


def label_val_by_kaggle(val: Split, solution: str):
    by_id = dk.read_kaggle_solution(solution)
    missing = [p for p in val.paths if os.path.splitext(p)[0] not in by_id]
    if missing:
        raise UserError(f"{solution}: no row for {missing[0]} (and {len(missing) - 1} more images of {val.src})")
    val.wnids = [by_id[os.path.splitext(p)[0]] for p in val.paths]


def kaggle_paths(root: str):
    """(train folder, val folder, LOC_val_solution.csv, LOC_synset_mapping.txt) of Kaggle's download."""
    cls_loc = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    paths = (os.path.join(cls_loc, "train"), os.path.join(cls_loc, "val"),
             os.path.join(root, "LOC_val_solution.csv"), os.path.join(root, "LOC_synset_mapping.txt"))
    for p in paths:
        if not os.path.exists(p):
            raise UserError(f"--kaggle {root}: no {os.path.relpath(p, root)}: expected the Kaggle download's "
                            "folder (ILSVRC/Data/CLS-LOC/{train,val}, LOC_val_solution.csv, LOC_synset_mapping.txt)")
    return paths
