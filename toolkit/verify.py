"""Check packed record files: every record readable and decodable, .idx consistent with the .rec.

`verify_rec` scans the .rec sequentially (so truncation is found wherever it is), compares the
record offsets with the .idx, decodes every image and counts labels; `rebuild_index` writes a missing
.idx from a scan (keys from the image headers' id, as im2rec wrote them); `verify_prefix` also
checks that each list's files are the shard set its last packing wrote (toolkit/shards.py).
"""
import collections
import dataclasses
import glob
import os
from typing import Dict, List, Optional

import torch
import torchvision.io as tvio

from toolkit import recordio, shards
from toolkit.atomic import atomic_open
from toolkit.errors import UserError


@dataclasses.dataclass
class VerifyReport:
    rec: str
    records: int = 0
    bad_images: int = 0
    labels: Dict[float, int] = dataclasses.field(default_factory=collections.Counter)
    problems: List[str] = dataclasses.field(default_factory=list)
    rebuilt: bool = False
    files: int = 1  # record files counted (a split's total: its shards)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_images


def scan(rec_path: str, report: Optional[VerifyReport] = None):
    """Yield (offset, payload) for each record; a truncation is recorded in `report` (or raised)."""
    try:
        yield from recordio.RecordReader(rec_path)
    except recordio.RecordIOError as exc:
        if report is None:
            raise
        report.problems.append(str(exc))


def rebuild_index(rec_path: str, idx_path: str) -> int:
    """Write idx_path from a scan of rec_path; returns the number of records indexed."""
    lines = [f"{recordio.unpack(p)[0].id}\t{off}\n" for off, p in scan(rec_path)]
    with atomic_open(idx_path) as f:
        f.writelines(lines)
    return len(lines)


def decodes(payload: bytes) -> bool:
    try:
        tvio.decode_image(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        return True
    except RuntimeError:
        return False


def verify_rec(rec_path: str, fix_index: bool = False) -> VerifyReport:
    report = VerifyReport(rec_path)
    idx_path = os.path.splitext(rec_path)[0] + ".idx"
    offsets = []
    for off, payload in scan(rec_path, report):
        offsets.append(off)
        header, image = recordio.unpack(payload)
        label = float(header.label) if header.flag == 0 else float(header.label[0])
        report.labels[label] += 1
        if not decodes(image):
            report.bad_images += 1
            report.problems.append(f"{rec_path}: record id {header.id} at offset {off} does not decode")
    report.records = len(offsets)
    if not os.path.exists(idx_path):
        if not fix_index or report.problems:
            report.problems.append(f"{idx_path}: missing (rebuild it with --fix-index)")
            return report
        rebuild_index(rec_path, idx_path)
        report.rebuilt = True
    _compare_index(report, idx_path, offsets)
    return report


def _compare_index(report: VerifyReport, idx_path: str, offsets: List[int]):
    size = os.path.getsize(report.rec)
    known = set(offsets)
    entries = recordio.read_index(idx_path)
    for lineno, (key, off) in enumerate(entries, 1):
        if off >= size:
            report.problems.append(f"{idx_path}:{lineno}: key {key} offset {off} is past the end "
                                   f"of the .rec ({size} bytes)")
        elif off not in known:
            report.problems.append(f"{idx_path}:{lineno}: key {key} offset {off} is not the start "
                                   "of a record")
    if len(entries) != len(offsets):
        report.problems.append(f"{idx_path}: {len(entries)} entries but the .rec holds "
                               f"{len(offsets)} records")


def verify_prefix(prefix: str, fix_index: bool = False) -> List[VerifyReport]:
    pattern = os.path.join(prefix, "*.rec") if os.path.isdir(prefix) else prefix + "*.rec"
    recs = sorted(glob.glob(pattern))
    if not recs:
        raise UserError(f"no record file matches {pattern}")
    reports = [verify_rec(r, fix_index) for r in recs]
    firsts = {}
    for report in reports:
        firsts.setdefault(shards.base(report.rec), report)
    for name, report in firsts.items():  # stale shards of an earlier packing: each file reads well
        wrong = shards.problem(name)
        if wrong:
            report.problems.append(wrong)
    return reports


def totals_per_split(reports: List[VerifyReport]) -> Dict[str, VerifyReport]:
    """One report per split (NAME.rec, or its shards NAME-NNNNN.rec): counts and labels summed."""
    totals: Dict[str, VerifyReport] = {}
    for r in reports:
        name = os.path.basename(shards.base(r.rec))
        t = totals.setdefault(name, VerifyReport(name, files=0))
        t.records, t.bad_images, t.files = t.records + r.records, t.bad_images + r.bad_images, t.files + 1
        t.labels.update(r.labels)
        t.problems += r.problems
    return totals
