"""The line reader of toolkit/logparse.py: a log file's lines as Speedometer rows and the items of
its other lines (epoch ends, LR changes, our resume and branch markers), of every MXNet era's shapes.

Speed: Speedometer lines are nearly all of a log and nearly all of one shape (the same text once
digits are deleted). Lines of that shape are read in one go by pandas' C reader as a tab-separated
table; every other line goes through the per-line regexes below, which would give the same values.
"""
import csv
import gc
import io
import math
import re
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from toolkit.errors import UserError
from toolkit.mxlog import BRANCH_PREFIX, RESUME_PREFIX

_BATCH = re.compile(rb"(\d+)\][ \t]*Batch[ \t]*\[(?:(\d+)-)?(\d+)\][ \t]*Speed:[ \t]*([^\s]*)"
                    rb"[ \t]*(?:samples/sec)?(.*)")          # after "Epoch[", all three eras
_METRIC = re.compile(rb"([^\s=]+)=([^\s]*)")
_END = re.compile(rb"(\d+)\][ \t]*(?:(Train|Validation)-([^\s=]+)=([^\s]*)|Time cost=([^\s]*))")
_UPDATE = re.compile(rb"Update\[\d+\]: Change learning rate to ([^\s]+)")
_MARKER = re.compile(RESUME_PREFIX.encode() + rb' "([^"\n]*)" at Epoch\[(\d+)\] Batch \[(\d+)\] with lr=([^\s]+)')
_BRANCH = re.compile(BRANCH_PREFIX.encode() + rb' Epoch\[\d+\] Batch \[\d+\]: [^"\n]*"([^"\n]*)"')
_DIGITS = b"0123456789."
_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))


_SEPARATORS = b"[]-=: \t\r\x00"
# bytes.translate arguments: separators become tabs, all but numbers and newlines go
_TABLE = (bytes.maketrans(_SEPARATORS, b"\t" * len(_SEPARATORS)),
          bytes(sorted(set(range(256)) - set(_DIGITS + b"\n" + _SEPARATORS))))
FAST_MIN_ROWS = 256  # below this many lines of one shape the per-line path is as quick


def _float(b: bytes) -> float:
    try:
        return float(b)
    except ValueError:
        return math.nan


def _name(b: bytes) -> str:
    name = b.decode("utf-8", "replace")
    return name[6:] if name.startswith("Train-") else name  # MXNet <= 0.9 batch lines


def _line_item(line: bytes):
    """One line -> ("row", epoch, first or None, last, speed, {metric: value}), ("end", epoch,
    column, value), ("lr", value), ("marker", epoch, batch, lr, checkpoint) or None."""
    p = line.find(b"Epoch[")
    if p >= 0:
        tail = line[p + 6:]
        m = _BATCH.match(tail)
        if m:
            e, f, last, s, rest = m.groups()
            return ("row", int(e), None if f is None else int(f), int(last), _float(s),
                    {_name(k): _float(v) for k, v in _METRIC.findall(rest)})
        m = _END.match(tail)
        if m:
            e, kind, name, value, cost = m.groups()
            if kind is None:
                return ("end", int(e), "time-cost", _float(cost))
            col = ("train-" if kind == b"Train" else "val-") + name.decode("utf-8", "replace")
            return ("end", int(e), col, _float(value))
        m = _MARKER.search(line)
        if m:
            ckpt, e, b, lr = m.groups()
            return ("marker", int(e), int(b), _float(lr), ckpt.decode("utf-8", "replace"))
        m = _BRANCH.search(line)
        if m:
            return ("branch", m.group(1).decode("utf-8", "replace"))
    elif b"Update[" in line:
        m = _UPDATE.search(line)
        if m:
            return ("lr", _float(m.group(1)))
    return None


def _layout(line: bytes):
    """How to read lines of this Speedometer line's shape as a table (`_TABLE` applied): [(column,
    field)] for the numbers, checked against the per-line regexes, and [(column, value)] for digits
    in metric names, which the shape does not see: top_k_accuracy_3 must not pass for _5 (a name
    gaining digits where this one has none would, at the price of reading every word)."""
    item = _line_item(line)
    if not item or item[0] != "row":
        return None
    _, epoch, first, last, speed, metrics = item
    fields = ["epoch"] + ([] if first is None else ["first"]) + ["last", "speed"] + list(metrics)
    expect = [epoch] + ([] if first is None else [first]) + [last, speed] + list(metrics.values())
    table, delete = _TABLE
    tokens = line.translate(table, delete).split(b"\t")
    words = line.translate(table, delete.translate(None, _LETTERS)).split(b"\t")  # letters kept
    skip = line[:line.find(b"Epoch[") + 6].translate(table, delete).count(b"\t")
    numbers = [i for i in range(skip, len(tokens)) if tokens[i] and words[i] == tokens[i]]
    try:  # a word of dots and digits ("a.b=", "v1.2.3") is no number: not this path's shape
        if len(numbers) != len(fields) or any(float(tokens[c]) != x for c, x in zip(numbers, expect)):
            return None
        checks = [(i, float(tokens[i])) for i in range(skip, len(tokens)) if tokens[i] and words[i] != tokens[i]]
    except ValueError:
        return None
    return list(zip(numbers, fields)), checks


def _fast_table(data: bytes, lines_at):
    """Lines of the commonest Speedometer shape read as one table -> (their line numbers, columns,
    the other lines' numbers and bytes); None where the per-line path must do it all."""
    shapes = data.translate(None, _DIGITS).split(b"\n")
    if len(shapes) < FAST_MIN_ROWS:
        return None
    for shape, _ in Counter(shapes[::max(1, len(shapes) // 4000)]).most_common(4):
        layout = _layout(lines_at(shapes.index(shape)))
        if layout:
            break
    else:
        return None
    odd = [i for i, s in enumerate(shapes) if s != shape]
    n = len(shapes) - len(odd)
    del shapes
    if n < FAST_MIN_ROWS:
        return None
    mask = np.ones(n + len(odd), bool)
    mask[odd] = False
    regular = np.flatnonzero(mask)
    # words go (the shape check vouched for them): a third of the bytes and columns are left
    numbers, words = layout
    text = b"".join(lines_at(a, b) for a, b in _runs(regular)).translate(*_TABLE)
    try:
        df = pd.read_csv(io.BytesIO(text), sep="\t", header=None, dtype=np.float64, engine="c",
                         usecols=sorted(c for c, _ in numbers + words), quoting=csv.QUOTE_NONE,
                         skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError):
        return None
    if len(df) != n:
        return None
    table = {f: df[c].to_numpy() for c, f in numbers}
    wrong = np.zeros(n, bool)
    for c, v in words:
        wrong |= df[c].to_numpy() != v
    if wrong.any():  # another name of the same shape: those lines go the per-line way
        odd = sorted(odd + regular[wrong].tolist())
        regular, table = regular[~wrong], {f: a[~wrong] for f, a in table.items()}
    return regular, table, odd, [lines_at(i) for i in odd]


def _runs(idx: np.ndarray):
    """Consecutive stretches [a, b) of sorted line numbers."""
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(idx)]
    return list(zip(idx[starts].tolist(), (idx[ends - 1] + 1).tolist()))


class _Lines:
    """Line i of a file's bytes (no newline), or the bytes of lines [a, b) with their newlines."""

    def __init__(self, data: bytes):
        nl = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        self.data, self.view = data, memoryview(data)
        self.starts, self.ends = np.r_[0, nl + 1], np.r_[nl, len(data)]

    def __len__(self):
        return len(self.starts)

    def __call__(self, a: int, b: Optional[int] = None):
        if b is None:
            return self.data[self.starts[a]:self.ends[a]]
        return self.view[self.starts[a]:self.ends[b - 1] + 1]


_FIXED = ("epoch", "first", "last", "speed")  # then one column per metric


def _rows(regular: np.ndarray, table: Optional[dict], extra: list):
    """Speedometer rows in line order, as {column: array} (first NaN where `Batch [n]` has none,
    a metric NaN where a line lacks it), from the table of lines `regular` and the per-line parses
    [(line, item)] of the others; and their line numbers."""
    n = len(regular)
    table = dict(table) if table else {k: np.empty(0) for k in ("epoch", "last", "speed")}
    ok = ~(np.isnan(table["epoch"]) | np.isnan(table["last"]) | np.isnan(table.get("first", 0)))
    table.setdefault("first", np.full(n, np.nan))  # lines of the right shape lacking numbers: not ours
    if extra:
        more = [{"epoch": it[1], "first": np.nan if it[2] is None else it[2], "last": it[3], "speed": it[4],
                 **it[5]} for _, it in extra]
        for k in dict.fromkeys([*table, *(k for m in more for k in m)]):
            table[k] = np.concatenate([table.get(k, np.full(n, np.nan)), [m.get(k, np.nan) for m in more]])
        regular = np.concatenate([regular, [i for i, _ in extra]]).astype(np.int64)
        ok = np.concatenate([ok, np.ones(len(extra), bool)])
    keep = slice(None) if ok.all() and not extra else np.flatnonzero(ok)[np.argsort(regular[ok], kind="stable")]
    rows = {k: table[k][keep] for k in [*_FIXED, *(k for k in table if k not in _FIXED)]}
    rows["epoch"], rows["last"] = rows["epoch"].astype(np.int64), rows["last"].astype(np.int64)
    return rows, regular[keep]


def concat(parts: Sequence[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    names = dict.fromkeys(k for p in parts for k in p)
    return {k: np.concatenate([p.get(k, np.full(len(p["epoch"]), np.nan)) for p in parts]) for k in names}


def scan_file(path: str, fast: bool):
    """One file -> (rows, items in log order): ("rows", a, b) for rows [a, b), ("end", epoch,
    column, value), ("lr", value), ("marker", epoch, batch, lr, checkpoint)."""
    gc_was = gc.isenabled()
    gc.disable()  # hundreds of thousands of new objects: the collector would rescan them all
    try:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"{path}: cannot read the log: {e.strerror or e}") from None
        lines = _Lines(data)
        found = _fast_table(data, lines) if fast else None
        regular, table, odd, odd_lines = found or (np.empty(0, np.int64), None, range(len(lines)),
                                                   map(lines, range(len(lines))))
        events, extra = [], []
        for i, line in zip(odd, odd_lines):
            if b"Epoch[" in line or b"Update[" in line:
                item = _line_item(line)
                if item:
                    (extra if item[0] == "row" else events).append((i, item))
        rows, row_line = _rows(regular, table, extra)
    finally:
        if gc_was:
            gc.enable()
    items, prev = [], 0
    before = np.searchsorted(row_line, [i for i, _ in events]).tolist()
    for r, (_, item) in zip(before, events):
        if r > prev:
            items.append(("rows", prev, r))
        items.append(item)
        prev = r
    if len(row_line) > prev:
        items.append(("rows", prev, len(row_line)))
    return rows, items
