"""The journal of runs (tools/runs.py): one row per run found in LOGS/ and CKPT/, from what the runs
already write.

- the log (ours or MXNet's, any era) through toolkit.logparse: epochs, validation and training
  figures, Speedometer images/s; in ours also the configuration (`config {...}` header of every
  launch), the world size, time stamps (wall time), and how the last launch ended ("Training
  finished", "Stopped at ...", "Error: ...");
- the checkpoints (PREFIX-NNNN.pt, MXNet's PREFIX-NNNN.params): epochs done; the newest one's
  configuration where the log has none (torch.load with weights_only and mmap: nothing else is read);
- LOGS/PREFIX.status.json, written by toolkit/engine/status.py (what a log cannot say: that the
  process is alive, by its heartbeat, or that it died without a word);
- tools/evaluate.py's per-class CSVs (LOGS/PREFIX-NNNN-SPLIT-per-class.csv): macro P/R/F1.
"""
import dataclasses
import glob
import json
import math
import os
import re
import time
from datetime import datetime
from typing import Dict, List, Optional

from toolkit.engine.status import liveness, read_status
from toolkit.errors import UserError

RECENT_S = 600  # a log without an end line, written to this recently, is taken as running
_CKPT = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4,})(?:-b(?P<batch>\d{6,}))?\.(?:pt|params)$")  # as checkpoint.py names them
_STAMP = re.compile(rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_HEADER = b" cnn-toolkit "          # first line of every launch of our trainer (toolkit/engine/logs.py)
_SKIP_FLAGS = {"recipe", "prefix", "logs_dir", "checkpoints_dir", "num_classes", "data", "lr_from_epoch"}
COLUMNS = ["prefix", "recipe", "flags", "epochs_done", "epochs_planned", "status", "best_val_top1",
           "best_val_top5", "best_epoch", "last_train_loss", "last_val_loss", "macro_precision",
           "macro_recall", "macro_f1", "eval", "images_per_sec", "wall_s", "detail", "data", "log"]


def checkpoints(directory: str, prefix: Optional[str] = None) -> Dict[str, Dict[tuple, str]]:
    """{prefix: {(epoch, batch): path}}: ours (.pt) and MXNet's (.params)."""
    out: Dict[str, Dict[tuple, str]] = {}
    for path in glob.glob(os.path.join(glob.escape(directory), "*-[0-9][0-9][0-9][0-9]*")):
        m = _CKPT.match(os.path.basename(path))
        if m and (prefix is None or m["prefix"] == prefix):
            out.setdefault(m["prefix"], {})[(int(m["epoch"]), int(m["batch"] or 0))] = path
    return out


def find_runs(logs_dir: str, checkpoints_dir: str) -> List[str]:
    """Prefixes of the runs with a log (LOGS/PREFIX.log) or checkpoints."""
    logs = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(glob.escape(logs_dir), "*.log"))}
    return sorted(logs | set(checkpoints(checkpoints_dir)))


@dataclasses.dataclass
class LogFacts:
    """What the raw text of our log says beyond the parsed figures (MXNet's logs: mostly nothing)."""
    config: Optional[dict] = None
    world: int = 1
    wall_s: float = math.nan
    ended: str = ""          # finished | stopped | failed | "" (no end line in the last launch)
    error: str = ""


def _stamp(data: bytes, at: int) -> Optional[float]:
    m = _STAMP.match(data, at)
    if not m:
        return None
    return datetime.strptime(m[1].decode(), "%Y-%m-%d %H:%M:%S").timestamp() + int(m[2]) / 1000


def _wall(data: bytes, starts: List[int]) -> float:
    """Sum over launches of last time stamp - first one (the header line's)."""
    total, ends = 0.0, starts[1:] + [len(data)]
    for a, b in zip(starts, ends):
        first, last, pos = _stamp(data, a), None, b
        while last is None and pos > a:
            pos = data.rfind(b"\n", a, max(pos - 1, a))
            last = _stamp(data, pos + 1 if pos >= 0 else a)
            if pos < 0:
                break
        if first is not None and last is not None:
            total += last - first
    return total


def log_facts(path: str) -> LogFacts:
    facts = LogFacts()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return facts
    starts, pos = [], data.find(_HEADER)
    while pos >= 0:  # header lines: "DATE TIME cnn-toolkit VERSION, torch ..."
        starts.append(data.rfind(b"\n", 0, pos) + 1)
        pos = data.find(_HEADER, pos + 1)
    last = data[starts[-1]:] if starts else data  # a launch may fail before its header: its Error line
    if starts:
        m = re.search(rb" config (\{.*\})\s*$", last, re.M)
        facts.config = json.loads(m[1]) if m else None
        m = re.search(rb"world size (\d+),", last)
        facts.world = int(m[1]) if m else 1
        facts.wall_s = _wall(data, starts)
    # how the last launch ended: the last of its end lines
    ends = {"finished": last.rfind(b" Training finished"), "failed": last.rfind(b" Error: "),
            "stopped": max(last.rfind(b" to resume: "), last.rfind(b" Stopped a"))}
    ended = max(ends, key=ends.get)
    if ends[ended] >= 0:
        facts.ended = ended
    if facts.ended == "failed":
        facts.error = last[ends["failed"] + 8:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    return facts


def checkpoint_config(path: str) -> dict:
    """The configuration stored in a checkpoint; mmap: the weights are not read."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a foreign or unreadable file: the row goes without it
        return {}
    return {"config": state.get("config") or {}, "world": state.get("world_size", 1)}


def flags_from_defaults(config: dict) -> str:
    """The options of `config` that differ from its recipe's defaults, as command-line flags."""
    from toolkit.engine.config import flag_text, make_config
    try:
        base = dataclasses.asdict(make_config(config["recipe"]))
        sized = dataclasses.asdict(make_config(config["recipe"], image_size=config.get("image_size")))
    except (UserError, KeyError, TypeError):
        return ""
    out = []
    for key in sorted(config):
        if key in _SKIP_FLAGS or key not in base:
            continue
        value, default = config[key], sized[key] if key == "eval_resize" else base[key]
        if isinstance(value, list):
            value = tuple(value)
        if value == default or value is None:
            continue
        out.append(flag_text(key, value))
    return " ".join(out)


def latest_evaluation(logs_dir: str, prefix: str) -> dict:
    """Macro precision/recall/F1 of the newest tools/evaluate.py per-class CSV of this run (mean over
    the classes present in the split or predicted, as scikit-learn's macro average)."""
    import pandas as pd
    pattern = re.compile(re.escape(prefix) + r"-(\d{4}(?:-b\d{6})?-.+)-per-class\.csv$")
    found = [p for p in glob.glob(os.path.join(glob.escape(logs_dir), glob.escape(prefix) + "-*-per-class.csv"))
             if pattern.match(os.path.basename(p))]
    if not found:
        return {}
    path = max(found, key=os.path.getmtime)
    try:
        table = pd.read_csv(path)
        seen = table[(table["support"] > 0) | (table["predicted"] > 0)]
        return {"macro_precision": seen["precision"].mean(), "macro_recall": seen["recall"].mean(),
                "macro_f1": seen["f1"].mean(), "eval": pattern.match(os.path.basename(path))[1]}
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return {}


def run_status(facts: LogFacts, status: Optional[dict], log_path: str, done: int, planned) -> tuple:
    """(status, detail): finished, stopped (resumable), running, lost (a launch whose heartbeat
    stopped: resumable), failed (NaN or an error). The status file speaks for the last launch;
    without one (older runs, MXNet's) the log's end lines do."""
    ended, detail = facts.ended, ""
    if status and status.get("status") == "running":
        alive, why = liveness(status)
        if alive == "running":
            return "running", why
        if not ended:
            ended, detail = ("stopped" if alive == "gone" else "lost"), why
    elif status:
        ended = status.get("status")
    if ended == "failed":
        code = (status or {}).get("code")
        error = facts.error or ("ended by an exception (its traceback is on the run's stderr)" if code is None
                                else f"exit status {code}")
        return "failed", ("NaN: " if re.search(r"loss became (nan|inf|-inf)", error) else "") + error
    if ended in ("finished", "stopped", "lost"):
        return ended, detail
    if os.path.exists(log_path) and time.time() - os.path.getmtime(log_path) < RECENT_S:
        return "running", "log written to in the last minutes"
    if planned and done >= planned:
        return "finished", ""
    return "stopped", "the log ends without saying why"


def journal_row(prefix: str, logs_dir: str, checkpoints_dir: str) -> dict:
    from toolkit.logparse import parse_logs
    log = os.path.join(logs_dir, prefix + ".log")
    found = checkpoints(checkpoints_dir, prefix).get(prefix, {})
    facts = log_facts(log)
    from toolkit.engine.checkpoint import ordered
    newest = found[ordered(found)[-1]] if found else None  # as tools/resume.py chooses
    saved = checkpoint_config(newest) if newest and newest.endswith(".pt") else {}
    # the newest checkpoint's: what a resume continues (a launch that failed before its first
    # checkpoint logged a header with flags that never took effect); the log's for runs without one
    config = saved.get("config") or facts.config or {}
    row = {"prefix": prefix, "recipe": config.get("recipe", ""), "flags": flags_from_defaults(config) if config else "",
           "epochs_planned": config.get("epochs"), "data": config.get("data", ""), "log": log if os.path.exists(log) else ""}
    done = max([e for e, _ in found] or [0])
    epochs = None
    if row["log"]:
        try:
            epochs = parse_logs([log]).epochs
        except UserError:
            epochs = None
    if epochs is not None:
        ended = epochs.index[epochs["time-cost"].notna()] if "time-cost" in epochs else []
        done = max(done, int(ended[-1]) + 1 if len(ended) else 0)  # Epoch[e] ends in checkpoint e + 1
        row.update(_figures(epochs))
    row["epochs_done"] = done
    row["wall_s"] = facts.wall_s
    if math.isnan(facts.wall_s) and epochs is not None and "time-cost" in epochs:  # MXNet's: no time stamps
        row["wall_s"] = float(epochs["time-cost"].sum())
    status, detail = run_status(facts, read_status(logs_dir, prefix), log, done, row["epochs_planned"])
    if status in ("stopped", "lost") and found and newest.endswith(".pt"):
        world = facts.world if facts.config else saved.get("world", 1)
        launcher = f"torchrun --nproc_per_node={world} " if world > 1 else ""
        extra = f" --checkpoints-dir {checkpoints_dir}" if checkpoints_dir != "checkpoints" else ""
        detail = (detail + "; " if detail else "") + f"{launcher}tools/resume.py --prefix {prefix}{extra}"
    row.update(status=status, detail=detail, config=json.dumps(config, sort_keys=True),
               **latest_evaluation(logs_dir, prefix))
    return row


def _figures(epochs) -> dict:
    """Best validation top-1 (top-5 at that epoch; best_epoch counts epochs trained, the checkpoint
    number), last train/val loss, mean Speedometer images/s."""
    from toolkit.plots import LOSSES
    out = {}
    if "val-accuracy" in epochs and epochs["val-accuracy"].notna().any():
        e = epochs["val-accuracy"].idxmax()
        out.update(best_val_top1=epochs.at[e, "val-accuracy"], best_epoch=int(e) + 1,
                   best_val_top5=epochs.at[e, "val-top_k_accuracy_5"] if "val-top_k_accuracy_5" in epochs else math.nan)
    for split in ("train", "val"):
        name = next((f"{split}-{n}" for n in LOSSES if f"{split}-{n}" in epochs), None)
        if name and epochs[name].notna().any():
            out[f"last_{split}_loss"] = epochs[name].dropna().iloc[-1]
    if "speed" in epochs and epochs["speed"].notna().any():
        out["images_per_sec"] = epochs["speed"].mean()
    return out


def journal(logs_dir: str = "logs", checkpoints_dir: str = "checkpoints", prefixes=None):
    """The journal as a pandas DataFrame (COLUMNS), one row per run (or per prefix given)."""
    import pandas as pd
    if not os.path.isdir(logs_dir) and not os.path.isdir(checkpoints_dir):
        raise UserError(f"neither {logs_dir}/ nor {checkpoints_dir}/ exists; point --logs-dir and "
                        "--checkpoints-dir at a run's folders")
    names = find_runs(logs_dir, checkpoints_dir) if prefixes is None else list(prefixes)
    rows = [journal_row(p, logs_dir, checkpoints_dir) for p in names]
    return pd.DataFrame(rows, columns=COLUMNS + ["config"]).astype({"epochs_done": "Int64", "epochs_planned": "Int64",
                                                       "best_epoch": "Int64"})


HIGHER_IS_BETTER = {"best_val_top1", "best_val_top5", "macro_precision", "macro_recall", "macro_f1",
                    "images_per_sec", "epochs_done"}


def select(df, filters=(), sort: Optional[str] = None):
    """Rows matching every KEY=PATTERN (a column, or a training option such as act=elu; shell-style
    wildcards), sorted by a column: best first for accuracies, F1, images/s; ascending otherwise."""
    from fnmatch import fnmatchcase
    from toolkit.engine.config import TrainConfig
    options = {f.name for f in dataclasses.fields(TrainConfig)}
    for spec in filters:
        key, sep, pattern = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--filter {spec}: expected COLUMN=VALUE, e.g. recipe=resnet18 or status=stopped")
        if key in df.columns and key != "config":
            values = [_text(v) for v in df[key]]
        elif key in options:
            values = [_text(json.loads(c).get(key)) for c in df["config"]]
        else:
            raise UserError(f"--filter {spec}: no column or training option {key!r}; columns: {', '.join(COLUMNS)}")
        df = df[[fnmatchcase(v, pattern) or _same_number(v, pattern) for v in values]]
    if sort:
        key = sort.replace("-", "_")
        if key not in COLUMNS:
            raise UserError(f"--sort {sort}: no such column; columns: {', '.join(COLUMNS)}")
        df = df.sort_values(key, ascending=key not in HIGHER_IS_BETTER, na_position="last", kind="stable")
    return df


def _text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (list, tuple)):
        return ",".join(f"{x:g}" for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _same_number(value: str, pattern: str) -> bool:
    try:
        return float(value) == float(pattern)
    except ValueError:
        return False


def _clock(seconds) -> str:
    if seconds is None or seconds != seconds:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def display(df):
    """The table as printed: epochs done/planned, figures rounded, wall time h:mm:ss."""
    import pandas as pd
    out = pd.DataFrame({"prefix": df["prefix"], "recipe": df["recipe"], "flags": df["flags"],
                        "epochs": [f"{d}/{'?' if pd.isna(p) else p}" for d, p in zip(df["epochs_done"], df["epochs_planned"])],
                        "status": df["status"]})
    for col in ("best_val_top1", "best_val_top5"):
        out[col] = [f"{v:.4f}" if v == v else "" for v in df[col]]
    out["best_epoch"] = ["" if pd.isna(v) else str(v) for v in df["best_epoch"]]
    for col in ("last_train_loss", "last_val_loss", "macro_precision", "macro_recall", "macro_f1"):
        out[col] = [f"{v:.4f}" if v == v else "" for v in df[col].astype(float)]
    out["eval"] = [v if isinstance(v, str) else "" for v in df["eval"]]
    out["images_per_sec"] = [f"{v:.1f}" if v == v else "" for v in df["images_per_sec"].astype(float)]
    out["wall"] = [_clock(v) for v in df["wall_s"].astype(float)]
    return out.reset_index(drop=True)


def markdown(table) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rows = ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join([head, "|" + " --- |" * len(table.columns)] + rows)


def notes(df) -> List[str]:
    """One line per run with something to say: the resume command, the error, the process."""
    return [f"{p} ({s}): {d}" for p, s, d in zip(df["prefix"], df["status"], df["detail"]) if d]
