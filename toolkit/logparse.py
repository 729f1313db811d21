"""Read MXNet-format training logs (ours and MXNet's own, of every era) into per-epoch and
per-batch tables, with the points where the run was resumed and where the learning rate changed.

No library parses MXNet logs (MXNet ships only tools/parse_log.py: three regexes and a markdown
table), so this is hand-written against the line shapes of MXNet's logs (toolkit/mxlog.py):
Speedometer lines `Batch [50]` (one metric per line or all of them) and `Batch [0-50]`,
`Train-`/`Validation-`/`Time cost` epoch lines (the FeedForward API has no `Train-` lines: the
epoch's last batch line stands in), `Update[n]: Change learning rate to ...` and our resume marker.
Lines are searched, never anchored, so any prefix (time stamps, `INFO:root:`, rank tags) works;
unknown lines are skipped. When the log goes back to an earlier position (a run resumed from an
earlier checkpoint) or our marker says so, the later lines replace everything from that point on,
and the point is recorded.

The lines are read by toolkit/logscan.py (the shapes of each era, and the fast path for Speedometer
lines); here they are replayed into one timeline and its tables.
"""
import math
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from toolkit.errors import UserError
from toolkit.logscan import concat, scan_file


class Resume(NamedTuple):
    epoch: int    # 0-based epoch where the resumed run starts
    batch: int    # batch within that epoch
    lr: float     # LR in effect there (NaN if the log never said)
    source: str   # "FILE: how it was detected"


@dataclass
class ParsedLog:
    epochs: pd.DataFrame               # index: 0-based epoch
    batches: Optional[pd.DataFrame]    # epoch, first, last, speed, metrics (with batches=True)
    resumes: List[Resume] = field(default_factory=list)
    lr_changes: List[float] = field(default_factory=list)  # epochs, fractional within one
    api: str = "module"                # "feedforward" when no Train- lines: training from batch lines
    files: List[str] = field(default_factory=list)


class _Timeline:
    """Replays the items of all files in order; a step back in (epoch, phase, batch) or our marker
    restarts the run there: what was logged from that point on is dropped and the point recorded."""

    def __init__(self, rows: dict):
        self.rows, self.alive = rows, np.ones(len(rows["epoch"]), bool)
        self.epoch, self.last, self.first = rows["epoch"], rows["last"], rows["first"]
        self.key = self.epoch * (1 << 32) + self.last
        self.back = (np.flatnonzero(np.diff(self.key) < 0) + 1).tolist()  # rows that step back
        self.pos = None      # (epoch, phase 0 batches / 1 epoch end, batch)
        self.done = 0        # rows [0, done) replayed
        self.ends: Dict[int, Dict[str, float]] = {}
        self.lrs: List[tuple] = []    # (epoch, batch, lr), in log order
        self.pending: List[float] = []  # LR lines waiting for the position of the next data line
        self.resumes: List[Resume] = []
        self.note = None     # "FILE: next file" until the next data line
        self.fresh = False   # a restart found by position waits for its LR
        self.path = ""
        self.marked = False  # our resume marker seen and no data line since

    def new_file(self, path: str):
        self.path = path
        if self.pos is not None:
            self.note = f"{path}: next file"

    def lr_now(self) -> float:
        return self.lrs[-1][2] if self.lrs else math.nan

    def restart(self, epoch: int, batch: int, how: str, lr: Optional[float] = None):
        e, last = self.epoch[:self.done], self.last[:self.done]
        self.alive[:self.done] &= ~((e > epoch) | ((e == epoch) & (last > batch)))
        self.ends = {k: v for k, v in self.ends.items() if k < epoch}
        self.lrs = [x for x in self.lrs if x[:2] < (epoch, batch)]
        self.resumes = [x for x in self.resumes if (x.epoch, x.batch) < (epoch, batch)]
        if lr is not None:
            self.lrs.append((epoch, batch, lr))
            self.pending = []
        self.pos, self.note, self.fresh = (epoch, 0, batch), None, lr is None
        self.resumes.append(Resume(epoch, batch, math.nan if lr is None else lr, f"{self.path}: {how}"))

    def enter(self, epoch: int, batch: int):
        """A data line at (epoch, batch): LR lines since the last one take effect here."""
        self.marked = False
        self.lrs.extend((epoch, batch, lr) for lr in self.pending)
        self.pending = []
        if self.fresh:  # a restart without our marker: its LR is the first one logged after it
            self.resumes[-1] = self.resumes[-1]._replace(lr=self.lr_now())
            self.fresh = False
        if self.note:
            self.resumes.append(Resume(epoch, batch, self.lr_now(), self.note))
            self.note = None

    def batch_rows(self, a: int, b: int):
        steps = self.back[bisect_right(self.back, a):bisect_left(self.back, b)]
        for i, j in zip([a] + steps, steps + [b]):
            epoch, last, first = int(self.epoch[i]), int(self.last[i]), self.first[i]
            back = self.pos is not None and (epoch, 0, last) < self.pos
            if not math.isnan(first):
                start = int(first)
            else:  # `Batch [n]`: the window began where the epoch's previous line ended
                start = self.pos[2] if self.pos and not back and self.pos[:2] == (epoch, 0) else 0
            if back:
                self.restart(epoch, start, f"epoch {epoch} logged again")
            self.enter(epoch, start)
            self.pos, self.done = (int(self.epoch[j - 1]), 0, int(self.last[j - 1])), j

    def end(self, epoch: int, col: str, value: float):
        here = (epoch, 1, 0)
        if self.marked and col.startswith("val-") and self.pos == (epoch + 1, 0, 0):
            self.ends.setdefault(epoch, {})[col] = value  # a resume validating the epoch it starts after
            return
        if self.pos is None or here < self.pos:
            if self.pos is not None:
                self.restart(epoch, 0, f"epoch {epoch} logged again")
            self.pos = here
        if self.pending or self.note or self.fresh:
            self.enter(epoch, self.pos[2] if self.pos[0] == epoch else 0)
        self.ends.setdefault(epoch, {})[col] = value
        if self.pos < here:
            self.pos = here

    def replay(self, item):
        kind = item[0]
        if kind == "rows":
            self.batch_rows(item[1], item[2])
        elif kind == "end":
            self.end(*item[1:])
        elif kind == "lr":
            self.pending.append(item[1])
        elif kind == "marker":
            epoch, batch, lr, ckpt = item[1:]
            self.restart(epoch, batch, f"resumed from {ckpt}", lr)
            self.marked = True
        elif kind == "branch" and self.resumes:
            r = self.resumes[-1]
            self.resumes[-1] = r._replace(source=f"{r.source}, a new branch (the abandoned one's later "
                                                 f"checkpoints in {item[1]})")

    def batches(self) -> pd.DataFrame:
        """Rows still in effect; repeated lines (two handlers, one metric per line) merged."""
        keep = slice(None) if self.alive.all() else self.alive
        df = pd.DataFrame({k: v[keep] for k, v in self.rows.items()})
        key = self.key[keep]
        if len(key) > 1 and (np.diff(key) == 0).any():
            df = df.groupby(["epoch", "last"], sort=False).last().reset_index()[df.columns]
        # `Batch [n]` lines: the window starts where the previous line of the epoch ended
        ep, last = df["epoch"].to_numpy(), df["last"].to_numpy()
        prev = np.where(np.r_[False, ep[1:] == ep[:-1]], np.r_[0, last[:-1]], 0)
        df["first"] = np.where(np.isnan(df["first"].to_numpy()), prev, df["first"].to_numpy()).astype(np.int64)
        return df


def _lr_table(lrs, epochs, batches_per_epoch):
    """LR in effect at the end of each epoch, and the (fractional) epochs where it changed."""
    at_end = []
    starts = [e for e, _, _ in lrs]
    for e in epochs:
        i = bisect_right(starts, e)
        at_end.append(lrs[i - 1][2] if i else math.nan)
    changes, prev = [], None
    for e, b, lr in lrs:
        if prev is not None and not math.isclose(lr, prev, rel_tol=1e-9):
            nb = batches_per_epoch.get(e, 0)
            x = e + min(b / nb, 1.0) if b and nb else float(e)
            if not changes or changes[-1] != x:
                changes.append(x)
        prev = lr
    return at_end, changes


def _epoch_table(tl: _Timeline, batches: pd.DataFrame):
    groups = batches.groupby("epoch", sort=True)
    speed, nb = groups["speed"].mean(), groups["last"].max()
    epochs = sorted(set(tl.ends) | set(speed.index.tolist()))
    cols = list(dict.fromkeys(c for e in sorted(tl.ends) for c in tl.ends[e]))
    api = "module" if any(c.startswith("train-") for c in cols) else "feedforward"
    table = {e: dict(tl.ends.get(e, {})) for e in epochs}
    if api == "feedforward":  # no Train- lines: the epoch's last Speedometer line stands in
        metrics = [c for c in batches.columns if c not in ("epoch", "first", "last", "speed")]
        last = batches.drop_duplicates("epoch", keep="last").set_index("epoch")
        for e in last.index:
            table[int(e)].update({f"train-{m}": last.at[e, m] for m in metrics})
        cols = [f"train-{m}" for m in metrics] + cols
    order = [c for c in cols if c.startswith("train-")] + [c for c in cols if c.startswith("val-")]
    df = pd.DataFrame.from_dict(table, orient="index", columns=order + ["time-cost"], dtype=np.float64)
    df.index = pd.Index(epochs, dtype=np.int64, name="epoch")
    df["speed"] = speed.reindex(df.index).to_numpy()
    df["lr"], changes = _lr_table(tl.lrs, epochs, {int(k): int(v) for k, v in nb.items()})
    return df, changes, api


def parse_logs(paths: Sequence[str], batches: bool = False, fast: bool = True) -> ParsedLog:
    """Parse one run logged in `paths` (read in order, later lines win). `fast=False` forces the
    per-line path (tests compare the two). Raises UserError for a missing, unreadable or empty log."""
    if isinstance(paths, (str, bytes)) or not hasattr(paths, "__iter__"):
        paths = [paths]
    paths = [os.fsdecode(p) for p in paths]
    if not paths:
        raise UserError("no log file given")
    scans = []
    for path in paths:
        rows, items = scan_file(path, fast)
        if not len(rows["epoch"]) and not any(it[0] in ("end", "marker") for it in items):
            raise UserError(f"{path}: no epoch data (no 'Epoch[N] Batch [...] Speed: ...', "
                            "'Epoch[N] Train-...', 'Validation-...' or 'Time cost' lines)")
        scans.append((rows, items))
    tl = _Timeline(concat([r for r, _ in scans]))
    offset = 0
    for path, (rows, items) in zip(paths, scans):
        tl.new_file(path)
        for it in items:
            tl.replay(("rows", it[1] + offset, it[2] + offset) if it[0] == "rows" else it)
        offset += len(rows["epoch"])
    table = tl.batches()
    epochs, changes, api = _epoch_table(tl, table)
    if epochs.empty:  # resume markers only
        raise UserError(f"{paths[0]}: no epoch data (only resume markers)")
    return ParsedLog(epochs=epochs, batches=table if batches else None, resumes=tl.resumes,
                     lr_changes=changes, api=api, files=paths)


def mxnet_markdown(epochs: pd.DataFrame, metrics: Sequence[str] = ("accuracy",)) -> str:
    """The table MXNet's tools/parse_log.py prints (its header, 1-based epochs, %f and %.1f) for
    the epochs with any of its figures; where MXNet averages an epoch logged twice, ours is the last."""
    cols = [f"train-{m}" for m in metrics] + [f"val-{m}" for m in metrics] + ["time-cost"]
    df = epochs.reindex(columns=cols)
    out = ["| epoch | " + " | ".join(cols[:-1]) + " | time |", "| --- " * (len(cols) + 1) + "|"]
    for e, v in zip(df.index, df.to_numpy().tolist()):
        if not all(map(math.isnan, v)):
            out.append("| %2d | " % (e + 1) + " | ".join("%f" % x for x in v[:-1]) + " | %.1f |" % v[-1])
    return "\n".join(out)
