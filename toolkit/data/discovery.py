"""Find a dataset directory's splits, classes and mean/std (the layout tools/im2rec.py writes).

A split S is every `.rec` whose name without extension and `-NNNNN` shard suffix is S or ends in
`_S` (`train.rec`, `imagenet_train.rec`, `train-00003.rec`), each with its `.idx` beside it.
"""
import dataclasses
import glob
import json
import os
import re
from typing import List, Optional, Tuple

import numpy as np

from toolkit import recordio
from toolkit.errors import UserError
from toolkit.lists import read_classes

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # 0-255 RGB
IMAGENET_STD = (58.395, 57.12, 57.375)
_SHARD = re.compile(r"-\d{5}$")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: Optional[int]
    class_names: Optional[List[str]]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def _split_base(name: str) -> str:
    return _SHARD.sub("", os.path.splitext(name)[0])


def split_files(data_dir: str, split: str) -> List[Tuple[str, str]]:
    """[(rec, idx), ...] of a split, in name order (shard order)."""
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: dataset folder not found (make one with tools/im2rec.py, "
                        "or leave out --data to use the toy dataset)")
    recs = sorted(p for p in glob.glob(os.path.join(data_dir, "*.rec"))
                  if _split_base(os.path.basename(p)) == split
                  or _split_base(os.path.basename(p)).endswith("_" + split))
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
    return pairs


def _mean_std(data_dir: str):
    for rec, _ in _safe_split_files(data_dir, "train"):
        path = _split_base(rec) + ".mean_std.json"
        if os.path.exists(path):
            with open(path) as f:
                stats = json.load(f)
            return tuple(stats["mean"]), tuple(stats["std"])
    return IMAGENET_MEAN, IMAGENET_STD


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


def labels_of(records: RecordSet) -> np.ndarray:
    """Every record's label (recordio.first_label: the first of a multi-label record), read from the
    headers only."""
    out = np.empty(len(records), dtype=np.int64)
    for i in range(len(records)):
        reader = records.readers[records.shard[i]]
        head, _ = reader.read_at(int(reader.offsets[records.local[i]]))
        out[i] = int(recordio.first_label(recordio.unpack_label(head)))
    return out
