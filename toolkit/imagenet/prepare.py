"""`tools/imagenet.py prepare`: lists, classes.tsv, record shards and the mean/std JSON of ILSVRC-2012
from any of the three routes (sources.py), resumable shard by shard.

Records are im2rec's (toolkit/im2rec.pack_jobs, the same bytes as `tools/im2rec.py` packing the
lists written here with the same flags), plus ImageNet's odd files (CMYK, PNG named .JPEG, grey)
stored as RGB JPEGs also under --pass-through. Each finished shard waits under a hidden name
(.NAME-00000.rec.part) and is recorded in prepare.json with its counts and pixel sums, so the same
command after a Ctrl-C or a kill continues at the first unfinished shard and ends with the same
bytes as an uninterrupted run; a split's shards are renamed into place together when all are done,
so no reader ever sees part of a split. A split is exactly the shard
set its packing wrote: other NAME.rec / NAME-NNNNN.rec files of it are removed at its end.
"""
import collections
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
from typing import Dict, List, Optional

import numpy as np

from toolkit import im2rec, lists, shards
from toolkit.atomic import atomic_open
from toolkit.errors import UserError
from toolkit.imagenet import devkit as dk, sources
from toolkit.imagenet.sources import Split

STATE = "prepare.json"
LOCK = ".prepare.lock"
TRAIN, VAL = "imagenet_train", "imagenet_val"
KIND_NAMES = {"cmyk": "CMYK JPEG", "png": "PNG named .JPEG", "grayscale": "grayscale JPEG", "other": "other format"}


@dataclasses.dataclass
class Plan:
    out: str
    classes: List[str]
    words: Dict[str, str]
    splits: Dict[str, Split]


def plan(train: Optional[str], val: Optional[str], devkit: Optional[str], kaggle: Optional[str], out: str) -> Plan:
    """Everything checked and indexed (tar headers only), nothing written."""
    if kaggle:
        if train or val:
            raise UserError("--kaggle DIR holds train and val: give it without --train and --val")
        train, val, solution, mapping = sources.kaggle_paths(kaggle)
    elif not (train and val):
        raise UserError("give --train and --val (ImageNet's tar files or unpacked folders) with --devkit, or --kaggle DIR")
    elif not devkit:
        raise UserError("--devkit ILSVRC2012_devkit_t12.tar.gz is required: the validation labels come from its "
                        "ground truth and meta.mat")
    kit = dk.load_devkit(devkit) if devkit else None
    splits = {TRAIN: sources.open_route(train, "train"), VAL: sources.open_route(val, "val")}
    if kaggle:
        sources.label_val_by_kaggle(splits[VAL], solution)
        words = lists.read_synset_words(mapping)
    else:
        sources.label_val_by_devkit(splits[VAL], kit)
    if kit:
        words = kit.words
    classes = sorted(set(splits[TRAIN].wnids))
    strays = sorted(set(splits[VAL].wnids) - set(classes))
    if strays:
        raise UserError(f"{kaggle or devkit}: validation images of {len(strays)} synset(s) with no train class "
                        f"({', '.join(strays[:3])}): are --train and the devkit of the same ImageNet?")
    return Plan(out, classes, words, splits)


def list_items(p: Plan, name: str, start: int = 0):
    """The split's list lines from `start` on, one at a time (1.28M of them for ImageNet's train)."""
    label = {w: float(i) for i, w in enumerate(p.classes)}
    split = p.splits[name]
    for i in range(start, len(split.paths)):
        yield lists.ListItem(i, split.paths[i], (label[split.wnids[i]],))


def _texts(p: Plan):
    """The files written as a whole: classes.tsv and the lists, as im2rec writes them."""
    texts = {"classes.tsv": "".join(f"{i}\t{w}\t{p.words[w]}\n" if w in p.words else f"{i}\t{w}\n"
                                    for i, w in enumerate(p.classes))}
    for name in p.splits:
        texts[name + ".lst"] = "".join(lists.format_line(it) for it in list_items(p, name))
    return texts


def _flags(opts: im2rec.PackOptions) -> dict:
    return {"resize": opts.resize, "quality": opts.quality, "pass_through": opts.pass_through,
            "num_shards": opts.num_shards}


def _settings(opts: im2rec.PackOptions, texts) -> dict:
    return {**_flags(opts), "files": {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in sorted(texts.items())}}


def check_flags(out: str, opts: im2rec.PackOptions):
    """Before any reading (ImageNet's tar headers take minutes): a set in `out` of other flags, or of
    another tool, is refused at once; its lists are compared once the sources are read (prepare)."""
    _check_out(out, _flags(opts))


def _check_out(out: str, settings: dict) -> dict:
    """The recorded state of `out` for these settings (without "files": the flags alone are compared);
    another set there is refused."""
    path = os.path.join(out, STATE)
    if not os.path.exists(path):
        if glob.glob(os.path.join(glob.escape(out), "*.rec")) or os.path.exists(os.path.join(out, "classes.tsv")):
            raise UserError(f"{out} holds a dataset not made by tools/imagenet.py prepare (no {STATE}): "
                            "give another --out, or delete its files")
        return {"settings": settings, "shards": {}}
    with open(path) as f:
        state = json.load(f)
    old = state.get("settings", {})
    if {k: old.get(k) for k in settings} != settings:
        diff = [f"--{k.replace('_', '-')} {old.get(k)} (now {settings[k]})" for k in settings
                if k != "files" and old.get(k) != settings[k]]
        diff += [f"{k} differs" for k in settings.get("files", {}) if old.get("files", {}).get(k) != settings["files"][k]]
        raise UserError(f"{out} holds a {'finished' if state.get('finished') else 'partly packed'} set of other "
                        f"settings ({'; '.join(diff)}): give another --out, or the same flags and sources to continue")
    return state


def _save(out: str, state: dict):
    with atomic_open(os.path.join(out, STATE)) as f:
        json.dump(state, f)


def prepare(p: Plan, opts: im2rec.PackOptions, log=print) -> dict:
    """Write everything under p.out; returns the summary (counts per split, odd files, skipped)."""
    opts = dataclasses.replace(opts, rgb_jpeg=True)
    texts = _texts(p)
    state = _check_out(p.out, _settings(opts, texts))
    os.makedirs(p.out, exist_ok=True)
    with open(os.path.join(p.out, LOCK), "w") as lock:
        try:
            # a POSIX lock belongs to this process alone: the packers it forks do not hold it, so a
            # kill -9 frees it at once (flock's would live on in the packers still finishing a chunk)
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{p.out}: another tools/imagenet.py prepare is writing it (wait for it, or give "
                            "another --out)") from None
        state = _check_out(p.out, state["settings"])  # again, as the run that held the lock left it
        for tmp in glob.glob(os.path.join(glob.escape(p.out), ".imagenet_*.tmp-*")):
            os.remove(tmp)  # a killed run's unfinished shard
        return _prepare_locked(p, opts, texts, state, log)


def _prepare_locked(p: Plan, opts, texts, state, log) -> dict:
    _save(p.out, state)  # first: files of a run without it are another tool's
    for fname, text in texts.items():  # classes.tsv written once: a later run has the same text
        with atomic_open(os.path.join(p.out, fname)) as f:
            f.write(text)
    summary = {}
    for name in p.splits:
        split_opts = opts if name == TRAIN else dataclasses.replace(opts, num_shards=1)
        summary[name] = _pack_split(p, name, split_opts, state, log)
    state["finished"] = True
    _save(p.out, state)
    return summary


def _part(path: str) -> str:
    """Where a finished shard file waits until its whole split is done: hidden, not a .rec to readers."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.part")


def _pack_split(p: Plan, name: str, opts: im2rec.PackOptions, state: dict, log) -> dict:
    prefix = os.path.join(p.out, name)
    split = p.splits[name]
    total = len(split.paths)
    names = shards.shard_names(prefix, opts.num_shards)
    done = state["shards"].setdefault(name, {})
    if name not in state.setdefault("committed", []) and state.get("committing") != name:
        first = 0
        while str(first) in done and all(os.path.exists(_part(names[first] + e)) for e in (".rec", ".idx")):
            first += 1
        if first:
            log(f"{name}: shards 0..{first - 1} of {len(names)} are done (recorded in {STATE}); continuing")
        start = im2rec.shard_bounds(total, opts.num_shards)[first] if first < len(names) else total
        jobs = ((split.job_source(it.index), it, opts) for it in list_items(p, name, start))
        for r in im2rec.pack_jobs(jobs, total, prefix, opts, fn=encode_image, first_shard=first):
            for tmp, final in r.staged:  # each .rec before its .idx
                os.replace(tmp, _part(final))
            done[str(r.shard)] = {"records": r.records, "skipped": r.skipped, "acc": r.acc.tolist(),
                                  "kinds": dict(r.kinds), "warnings": r.warnings}
            _save(p.out, state)
    finished = [done[str(k)] for k in range(len(names))]
    records = sum(s["records"] for s in finished)
    if not records:
        raise UserError(f"{split.src}: none of its {total} images could be read (warnings above)")
    if name not in state["committed"]:
        resumed = state.get("committing") == name
        state["committing"] = name  # recorded first: a commit cut short is finished, not packed again
        _save(p.out, state)
        _commit(prefix, names, sum(np.array(s["acc"]) for s in finished), records, resumed)
        state["committed"].append(name)
        del state["committing"]
        _save(p.out, state)
    kinds = collections.Counter()
    for s in finished:
        kinds.update(s["kinds"])
    return {"records": records, "images": total, "shards": len(names), "kinds": dict(kinds),
            "skipped": [w for s in finished for w in s["warnings"]]}


def _commit(prefix: str, names: List[str], acc: np.ndarray, records: int, resumed: bool = False):
    """The split's shards, all finished, put in place at once with its packing record (mean/std, the
    shard set: toolkit/shards.py, as im2rec does): a reader never sees part of a split. `resumed`: a
    commit was cut short (a Ctrl-C, held until its end, or a kill); shards.commit writes the record
    first, so where some shards are in place already only the renames are left to do."""
    staged = [(_part(n + ext), n + ext) for n in names for ext in (".rec", ".idx")]  # each .rec first
    left = [(tmp, final) for tmp, final in staged if os.path.exists(tmp)]
    if resumed and len(left) < len(staged):
        for tmp, final in left:
            os.replace(tmp, final)
    else:
        shards.commit(prefix, staged, im2rec.mean_std(acc, records))


_FILES: Dict[str, int] = {}  # tar file -> descriptor, per packing process


def _read(src, item) -> tuple:
    """(bytes, name for messages) of one image: a file under a folder, or a span of a tar file."""
    if isinstance(src, str):
        path = os.path.join(src, item.path)
        with open(path, "rb") as f:
            return f.read(), path
    tar, offset, size = src
    if tar not in _FILES:
        _FILES[tar] = os.open(tar, os.O_RDONLY)
    data = os.pread(_FILES[tar], size, offset)
    if len(data) != size:
        raise OSError(f"{tar} ends inside {item.path} (truncated download?)")
    return data, f"{tar}:{item.path}"


def encode_image(job):
    """Packing worker: im2rec's record of one image, with its kind (cmyk, png, ...) counted."""
    src, item, opts = job
    where = item.path
    try:
        data, where = _read(src, item)
        kind = im2rec.kind_of(data)
        return (item.index, *im2rec.encode_bytes(data, item, opts), None, *([kind] if kind != "rgb" else []))
    except Exception as exc:  # named and skipped, as im2rec does; its list line keeps its label
        return item.index, None, None, im2rec.skip_warning(where, exc)
