"""Find a dataset directory's splits, classes and mean/std (the layout tools/im2rec.py writes).

A split S is every `.rec` whose name without extension and `-NNNNN` shard suffix is S or ends in
`_S` (`train.rec`, `imagenet_train.rec`, `train-00003.rec`), each with its `.idx` beside it; each
list's files must be the set its last packing wrote (toolkit/shards.py: a mixture is refused).
"""
import dataclasses
import glob
import json
import os
from typing import List, Optional, Tuple

import numpy as np

from toolkit import recordio, shards
from toolkit.errors import UserError
from toolkit.lists import read_classes

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # 0-255 RGB
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: Optional[int]
    class_names: Optional[List[str]]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def _split_base(name: str) -> str:
    return shards.base(name)


def split_files(data_dir: str, split: str) -> List[Tuple[str, str]]:
    """[(rec, idx), ...] of a split, in name order (shard order)."""
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: dataset folder not found (make one with tools/im2rec.py, "
                        "or leave out --data to use the toy dataset)")
    recs = _split_recs(data_dir, split)
    if not recs:
        found = sorted({_split_base(os.path.basename(p)) for p in glob.glob(os.path.join(data_dir, "*.rec"))})
        raise UserError(f"{data_dir}: no .rec files for split {split!r} (found: {', '.join(found) or 'none'}); "
                        f"a split S is S.rec, NAME_S.rec or S-00000.rec")
    pairs = []
    for rec in recs:
        idx = os.path.splitext(rec)[0] + ".idx"
        if not os.path.exists(idx):
            raise UserError(f"{idx}: index file missing for {rec} "
                            "(rebuild it with: tools/im2rec.py --verify --fix-index PREFIX)")
        pairs.append((rec, idx))
    for name in sorted({shards.base(r) for r in recs}):  # each list's files: one packing's set
        wrong = shards.problem(name)
        if wrong:
            raise UserError(f"{data_dir}: split {split!r}: {wrong}")
    return pairs


def _split_recs(data_dir: str, split: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(data_dir, "*.rec"))
                  if _split_base(os.path.basename(p)) == split
                  or _split_base(os.path.basename(p)).endswith("_" + split))


def has_split(data_dir: str, split: str) -> bool:
    """Does a .rec of the split exist? (A missing .idx beside it is split_files' one-line error, not
    a split that is absent: a run must not go on without its validation.)"""
    return bool(_split_recs(data_dir, split))


def _mean_std(data_dir: str):
    for rec, _ in _safe_split_files(data_dir, "train"):
        path = _split_base(rec) + ".mean_std.json"
        if os.path.exists(path):
            return read_mean_std(path)
    return IMAGENET_MEAN, IMAGENET_STD


def read_mean_std(path: str):
    """((r, g, b) mean, (r, g, b) std) of a NAME.mean_std.json; a malformed file is one UserError."""
    fix = "re-pack the split with tools/im2rec.py, or delete the file to use ImageNet's figures"
    try:
        with open(path) as f:
            stats = json.load(f)
        mean, std = (tuple(float(v) for v in stats[k]) for k in ("mean", "std"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"{path}: not a readable mean/std file ({reason}); {fix}") from None
    if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise UserError(f"{path}: expected 3 finite means and 3 positive standard deviations, got "
                        f"mean {list(mean)} std {list(std)}; {fix}")
    return mean, std


def _safe_split_files(data_dir, split):
    try:
        return split_files(data_dir, split)
    except UserError:
        return []


def dataset_info(data_dir: str) -> DatasetInfo:
    classes_file = os.path.join(data_dir, "classes.tsv")
    names = read_classes(classes_file) if os.path.exists(classes_file) else None
    mean, std = _mean_std(data_dir)
    return DatasetInfo(len(names) if names else None, names, mean, std)


@dataclasses.dataclass
class RecordSet:
    """All records of a split: readers per shard and a flat (shard, position) table."""
    files: List[Tuple[str, str]]
    readers: List[recordio.IndexedRecordReader]
    shard: np.ndarray   # int32, shard of each global record index
    local: np.ndarray   # int64, position of the record in its shard's index

    def __len__(self):
        return len(self.shard)

    def read(self, i: int) -> bytes:
        return self.readers[self.shard[i]].read(int(self.local[i]))

    def name(self, i: int) -> str:
        """A record's id in every tool's output: FILE.rec#KEY (KEY: its .idx key, the .lst image id)."""
        r = self.readers[self.shard[i]]
        return f"{r.path}#{r.keys[self.local[i]]}"

    def where(self, i: int) -> str:
        r = self.readers[self.shard[i]]
        return f"{r.path} key {r.keys[self.local[i]]} offset {int(r.offsets[self.local[i]])}"


def open_split(data_dir: str, split: str) -> RecordSet:
    files = split_files(data_dir, split)
    readers = [recordio.IndexedRecordReader(idx, rec) for rec, idx in files]
    sizes = [len(r) for r in readers]
    if sum(sizes) == 0:
        raise UserError(f"{data_dir}: split {split!r} has no records")
    shard = np.repeat(np.arange(len(readers), dtype=np.int32), sizes)
    local = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
    return RecordSet(files, readers, shard, local)


_HEAD = 8 + recordio.IR_SIZE + 4  # frame header, image record header, first label of a multi-label one
_CHUNK = 1 << 16


def labels_of(records: RecordSet) -> np.ndarray:
    """Every record's (first) label as int64, from the headers only (see header_labels)."""
    return header_labels(records).astype(np.int64)


def header_labels(records: RecordSet) -> np.ndarray:
    """Every record's label as float64 (the first label of a multi-label record, the rule both
    backends follow), read from the headers only: 36 bytes at each .idx offset through a memory map,
    gathered with numpy per 65,536 records, nothing decoded (ImageNet's 1.28M records: headers only,
    a few MB of I/O beyond the pages they sit in). Hand-written: no library reads RecordIO headers."""
    out = np.empty(len(records), dtype=np.float64)
    for s, reader in enumerate(records.readers):
        where = np.flatnonzero(records.shard == s)
        out[where] = _shard_labels(reader)[records.local[where]]
    return out


def _shard_labels(reader: recordio.IndexedRecordReader) -> np.ndarray:
    import mmap
    offsets = reader.offsets
    out = np.empty(len(offsets), dtype=np.float64)
    if not len(offsets):
        return out
    with open(reader.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        mm.madvise(mmap.MADV_RANDOM)  # one page per record, no read-ahead of the image bytes
        data = np.frombuffer(mm, dtype=np.uint8)
        span, slow = np.arange(_HEAD), []
        for lo in range(0, len(offsets), _CHUNK):
            off = offsets[lo:lo + _CHUNK]
            fits = off + _HEAD <= len(data)
            head = np.zeros((len(off), _HEAD), np.uint8)
            head[fits] = data[off[fits, None] + span]
            words = head[:, :12].copy().view("<u4")  # magic, length word, flag
            length, flag = words[:, 1] & (recordio.MAX_RECORD - 1), words[:, 2]
            scalar = head[:, 12:16].copy().view("<f4")[:, 0]
            first = head[:, 32:36].copy().view("<f4")[:, 0]
            out[lo:lo + len(off)] = np.where(flag > 0, first, scalar)
            # anything else (a record split by dmlc-core inside its header, a short record, a bad
            # offset) is read the slow way, which also names what is wrong with it
            odd = ~fits | (words[:, 0] != recordio.MAGIC) | (length < np.where(flag > 0, 28, 24))
            slow.extend(lo + np.flatnonzero(odd))
        del data  # before the map closes (BufferError otherwise, which hid the error below)
    for i in slow:  # after the map is closed: an error here is the one the user sees
        out[i] = _slow_label(reader, int(i))
    return out


def _slow_label(reader, i: int) -> float:
    lab = recordio.unpack_label(reader.read(i))
    return float(lab if np.isscalar(lab) else lab[0])


def num_classes_from_labels(records: RecordSet) -> int:
    """max label + 1 over a split (datasets made by MXNet's im2rec have no classes.tsv)."""
    labels = header_labels(records)
    finite = labels[np.isfinite(labels)]
    return int(finite.max()) + 1 if len(finite) and finite.max() >= 0 else 1


def check_labels(records: RecordSet, num_classes: int, labels=None, fix: str = ""):
    """One UserError naming the first record whose label is not an integer in [0, num_classes)."""
    labels = header_labels(records) if labels is None else labels
    bad = ~np.isfinite(labels) | (labels < 0) | (labels >= num_classes) | (labels != np.floor(labels))
    if bad.any():
        i = int(np.argmax(bad))
        reader = records.readers[records.shard[i]]
        lab = labels[i]
        what = f"label {lab:g} is not an integer" if np.isfinite(lab) and lab != np.floor(lab) else \
            f"label {lab:g} is outside 0..{num_classes - 1}"
        raise UserError(f"{reader.path} key {int(reader.keys[records.local[i]])}: {what} "
                        f"({int(bad.sum())} such records in the split); {fix}")
