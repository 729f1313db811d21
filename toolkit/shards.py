"""The records of a packed list are exactly the shard set its last packing wrote.

tools/im2rec.py packs NAME.lst into NAME.rec/.idx, or NAME-00000.rec/.idx ... with --num-shards. It
writes every file under a temp name first; then, with Ctrl-C/SIGTERM held back, it writes
NAME.mean_std.json (the packing's record: mean/std, record count, and the shard set as file names
and sizes), removes whatever an earlier packing of NAME left (NAME.rec beside new shards, shards 2-3
of an earlier 4), and renames the new files into place. Re-packing thus needs room for both sets
until the new one is complete: the old set stays readable until then.

Discovery (toolkit/data/discovery.py) and `tools/im2rec.py --verify` read a list's files through
`problem()`: a file the packing record does not list, one it lists that is missing or of another
size, NAME.rec next to NAME-00000.rec, or a gap in the shard numbers, is one line naming the files
(a crash in the middle of a re-pack leaves such a mixture, never a silently different split). For
a packing record written before it listed the files, the record count must match; MXNet-made
folders (no record) get the naming checks only; a list MXNet's im2rec packed again after ours leaves
our record stale: the refusal says so (delete the record to keep MXNet's files).
"""
import glob
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from toolkit.atomic import atomic_open, signals_held

SHARD = re.compile(r"-(\d{5})$")
RECORD = ".mean_std.json"   # the packing's record (historical name: it began with the mean/std only)


def base(path: str) -> str:
    """NAME of a record file: its path without extension and -NNNNN shard suffix."""
    return SHARD.sub("", os.path.splitext(path)[0])


def shard_names(name: str, num_shards: int) -> List[str]:
    return [name] if num_shards <= 1 else [f"{name}-{k:05d}" for k in range(num_shards)]


def files_of(name: str) -> List[str]:
    """The .rec files on disk that belong to NAME (NAME.rec and NAME-NNNNN.rec), sorted."""
    found = glob.glob(glob.escape(name) + ".rec") + glob.glob(glob.escape(name) + "-[0-9]*.rec")
    return sorted(p for p in found if base(p) == name)


def read_record(name: str) -> Optional[dict]:
    """NAME.mean_std.json as a dict; None when missing or unreadable (its reader names that)."""
    try:
        with open(name + RECORD) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _idx(rec: str) -> str:
    return os.path.splitext(rec)[0] + ".idx"


def entries(recs: Sequence[str], sizes_from: Optional[Dict[str, str]] = None) -> List[dict]:
    """The shard set as the packing record stores it: file names (no folder) and sizes. `sizes_from`
    maps a final path to the temp file holding its content (before the rename)."""
    src = sizes_from or {}
    return [{"rec": os.path.basename(r), "bytes": _size(src.get(r, r)),
             "idx_bytes": _size(src.get(_idx(r), _idx(r)))} for r in recs]


def _names(paths) -> str:
    return ", ".join(os.path.basename(p) for p in paths)


def _count(idx_paths) -> int:
    total = 0
    for p in idx_paths:
        with open(p, "rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return total


def problem(name: str) -> Optional[str]:
    """One line saying why NAME's files on disk are not the set one packing wrote, else None."""
    recs = files_of(name)
    plain = [r for r in recs if not SHARD.search(os.path.splitext(r)[0])]
    sharded = [r for r in recs if r not in plain]
    fix = f"pack {os.path.basename(name)}.lst again with tools/im2rec.py (it replaces the old files)"
    if plain and sharded:
        return (f"{_names(plain)} and {_names(sharded)} are two packings of one list; delete the stale "
                f"ones, or {fix}")
    record = read_record(name)
    listed = record.get("shards") if record else None
    if isinstance(listed, list):
        return _against_record(name, recs, listed, fix)
    numbers = [int(SHARD.search(os.path.splitext(r)[0])[1]) for r in sharded]
    if numbers and numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        return (f"shards of {os.path.basename(name)}: {_names(sharded)}; shard {missing[0]:05d} is missing: "
                f"restore it, or {fix}")
    images = record.get("images") if record else None
    idx = [_idx(r) for r in recs]
    if isinstance(images, int) and all(os.path.exists(p) for p in idx) and _count(idx) != images:
        return (f"{_names(recs)} hold {_count(idx)} records, but the last packing of "
                f"{os.path.basename(name)} wrote {images} ({os.path.basename(name)}{RECORD}): files of an "
                f"earlier packing are mixed in; {fix}{_other_tool(os.path.basename(name) + RECORD)}")
    return None


def _other_tool(record: str) -> str:
    """The way out when MXNet's own im2rec re-packed the list after ours: our record is then stale."""
    return (f"; or, if another tool (MXNet's im2rec) packed it since, delete {record} (its mean/std are the "
            "earlier packing's)")


def _against_record(name: str, recs: List[str], listed: List[dict], fix: str) -> Optional[str]:
    folder = os.path.dirname(name)
    expected = [os.path.join(folder, str(e.get("rec"))) for e in listed if isinstance(e, dict)]
    record = os.path.basename(name) + RECORD
    extra = [r for r in recs if r not in expected]
    if extra:
        return (f"{_names(extra)}: not in the shard set the last packing of {os.path.basename(name)} wrote "
                f"({_names(expected)}; {record}): left by an earlier packing; delete them, or {fix}")
    missing = [r for r in expected if r not in recs]
    if missing:
        return f"{_names(missing)}: missing, though the last packing wrote it ({record}); {fix}"
    now = entries(expected)
    changed = [e["rec"] for e, was in zip(now, listed)
               if (e["bytes"], e["idx_bytes"]) != (was.get("bytes"), was.get("idx_bytes"))]
    if changed:
        return (f"{', '.join(changed)} (or its .idx): not the size the last packing wrote ({record}): a "
                f"re-pack cut short, or a file changed since; {fix}{_other_tool(record)}")
    return None


def commit(name: str, staged: List[Tuple[str, str]], record: dict):
    """Put a complete new shard set in place of NAME's files: `staged` is [(temp path, final path)]
    (each .rec before its .idx); `record` goes to NAME.mean_std.json with the set added. Signals
    are held until the last rename, so a Ctrl-C leaves either state, or a mixture that problem()
    names (a crash): never one that reads as a split."""
    final = [dst for _, dst in staged]
    recs = [dst for dst in final if dst.endswith(".rec")]
    record = {**record, "shards": entries(recs, {dst: src for src, dst in staged})}
    with signals_held():
        with atomic_open(name + RECORD) as f:
            json.dump(record, f)
            f.write("\n")
        for old in files_of(name):
            for path in (old, _idx(old)):
                if path not in final and os.path.exists(path):
                    os.remove(path)
        for src, dst in staged:
            os.replace(src, dst)
