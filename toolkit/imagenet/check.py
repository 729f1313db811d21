"""`tools/imagenet.py check DATA`: a prepared ImageNet verified, with a one-screen summary.

The class count, the record count of each split, every record read and decoded (all cores, a
progress bar; chunks of an .idx per task), each record's label against its list line (train: the
label of its synset folder in classes.tsv) and, with the devkit, classes.tsv against meta.mat's
leaves and each validation label against the ground truth."""
import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

from toolkit import lists, recordio
from toolkit.data.discovery import split_files
from toolkit.errors import UserError
from toolkit.imagenet import devkit as dk
from toolkit.imagenet.prepare import TRAIN, VAL
from toolkit.verify import decodes


@dataclasses.dataclass
class SplitCheck:
    name: str
    files: int = 0
    records: int = 0
    undecodable: List[str] = dataclasses.field(default_factory=list)
    labels: Dict[int, float] = dataclasses.field(default_factory=dict)   # record id -> label
    problems: List[str] = dataclasses.field(default_factory=list)


def _read_chunk(job):
    """(ids, labels, undecodable 'FILE key K') of the records at `offsets` of one .rec."""
    rec, keys, offsets = job
    reader = recordio.RecordReader(rec)
    ids, labels, bad = [], [], []
    try:
        for key, off in zip(keys, offsets):
            try:
                header, image = recordio.unpack(reader.read_at(int(off))[0])
            except (recordio.RecordIOError, ValueError) as exc:
                bad.append(f"{rec} key {key} offset {off}: {exc}")
                continue
            ids.append(header.id)
            labels.append(recordio.first_label(header.label))
            if not decodes(image):
                bad.append(f"{rec} key {key} offset {off}: does not decode")
    finally:
        reader.close()
    return ids, labels, bad


def read_split(data: str, name: str, processes: int, chunk: int = 2000) -> SplitCheck:
    out = SplitCheck(name)
    files = split_files(data, name)
    out.files = len(files)
    jobs = []
    for rec, idx in files:
        keys, offsets = recordio.read_index_arrays(idx)
        jobs += [(rec, keys[i:i + chunk], offsets[i:i + chunk]) for i in range(0, len(keys), chunk)]
    total = sum(len(j[1]) for j in jobs)
    with ProcessPoolExecutor(max(1, processes)) as pool, \
            tqdm(total=total, unit="rec", desc=f"check {name}", disable=None) as bar:
        for (rec, keys, _), (ids, labels, bad) in zip(jobs, pool.map(_read_chunk, jobs)):
            out.labels.update(zip(ids, labels))
            out.undecodable += bad
            out.records += len(keys)
            bar.update(len(keys))
    return out


def _expected(data: str, name: str) -> Optional[Dict[int, float]]:
    path = os.path.join(data, name + ".lst")
    return {it.index: it.labels[0] for it in lists.read_list(path)} if os.path.exists(path) else None


def check(data: str, classes: int, counts: Dict[str, int], devkit: Optional[str], processes: int) -> List[str]:
    """Problems found (printed by the tool with the summary); [] when the set is sound."""
    problems, lines = [], []
    kit = dk.load_devkit(devkit) if devkit else None  # a bad devkit is refused before any reading
    cls_path = os.path.join(data, "classes.tsv")
    if not os.path.exists(cls_path):
        raise UserError(f"{data}: no classes.tsv: is it the --out of tools/imagenet.py prepare?")
    names = lists.read_classes(cls_path)
    if len(names) != classes:
        problems.append(f"classes.tsv lists {len(names)} classes, expected {classes} (--classes)")
    if kit and (names != sorted(names) or set(names) - set(kit.leaves)):
        problems.append(f"classes.tsv's wnids are not {len(names)} of the devkit's {len(kit.leaves)} leaves "
                        "in sorted order")
    for name in (TRAIN, VAL):
        got = read_split(data, name, processes)
        want = _expected(data, name)
        if kit and name == VAL and kit.ground_truth:
            label = {w: i for i, w in enumerate(names)}
            want = {k: float(label.get(kit.id_wnids[i - 1], -1)) for k, i in enumerate(kit.ground_truth)}
        wrong = [k for k, v in got.labels.items() if want is not None and want.get(k) != v]
        if got.records != counts[name]:
            problems.append(f"{name}: {got.records} records, expected {counts[name]}")
        if wrong:
            source = "the devkit" if kit and name == VAL else name + ".lst"
            problems.append(f"{name}: {len(wrong)} labels differ from {source}"
                            f" (record id {wrong[0]}: {got.labels[wrong[0]]:g}, expected {want.get(wrong[0], 'none')})")
        problems += [f"{name}: {b}" for b in got.undecodable[:5]]
        if len(got.undecodable) > 5:
            problems.append(f"{name}: {len(got.undecodable) - 5} more undecodable records")
        per_class = np.bincount(np.array(list(got.labels.values()), np.int64).clip(0), minlength=len(names))
        lines.append(f"{name}: {got.records} records in {got.files} file(s), {len(got.undecodable)} undecodable, "
                     f"{len(wrong)} wrong labels; images per class {per_class.min()}..{per_class.max()}")
    print(f"{data}: {len(names)} classes" + (f", labels against {devkit}" if kit else ""))
    for line in lines:
        print("  " + line)
    return problems
