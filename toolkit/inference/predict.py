"""tools/predict.py: top-k classes of image files (files, folders, globs, .lst) or of a split's
records, with one checkpoint or the mean softmax of an ensemble.

Images are decoded and preprocessed by the evaluation loader's own code (torch_backend's
build_transform: decode, shorter-side resize, centre crop or ten crop; then normalize), so a file
gives the same pixels as its packed record in tools/evaluate.py (tested). Under torchrun each rank
takes a contiguous slice of the inputs and rank 0 writes everything, in input order.
"""
import contextlib
import glob
import json
import os
import sys
import time
from typing import List, Optional

import pandas as pd
import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from toolkit import recordio
from toolkit.atomic import atomic_open
from toolkit.data import workers as worker_procs
from toolkit.data.discovery import open_split
from toolkit.data.torch_backend import normalize
from toolkit.data.transforms import build_transform
from toolkit.engine import checkpoint, dist
from toolkit.engine.preflight import not_an_input, writable_file
from toolkit.engine.evaluation import write_csv
from toolkit.engine.step import autocast
from toolkit.errors import UserError
from toolkit.lists import IMAGE_EXTS, image_files, read_list

_GLOB = set("*?[")


def gather_files(inputs, root: Optional[str] = None) -> List[str]:
    """The image files named by `inputs` (files, folders walked recursively, globs, .lst lists, whose
    paths are relative to `root`, default the list's folder), in order; a missing one is an error."""
    files = []
    for arg in inputs:
        if arg.endswith(".lst") and os.path.isfile(arg):
            base = root or os.path.dirname(arg)
            listed = [os.path.join(base, item.path) for item in read_list(arg)]
            missing = [p for p in listed if not os.path.isfile(p)]
            if missing:  # a wrong root, not a few bad files: one line before any work
                raise UserError(f"{arg}: {len(missing)} of {len(listed)} listed images are not under "
                                f"{base or '.'}/ (first: {missing[0]}); pass --image-root DIR, the folder its paths "
                                "are relative to (for tools/make_toy.py's lists: DATA/images)")
            files += listed
        elif os.path.isdir(arg):
            found = image_files(arg)
            if not found:
                raise UserError(f"{arg}: no images ({', '.join(IMAGE_EXTS)}) in this folder or below")
            files += found
        elif os.path.isfile(arg):
            files.append(arg)
        elif _GLOB & set(arg):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                raise UserError(f"{arg}: the pattern matches no file")
            files += found
        else:
            raise UserError(f"{arg}: no such file, folder or .lst list")
    return files


class Sources:
    """Names and bytes of the inputs: image files, or the records of a split (named FILE.rec#KEY)."""

    def __init__(self, files=None, data: Optional[str] = None, split: Optional[str] = None):
        self.files, self.records = files, open_split(data, split) if split else None

    def __len__(self):
        return len(self.records) if self.records is not None else len(self.files)

    def name(self, i: int) -> str:
        return self.files[i] if self.records is None else self.records.name(i)

    def read(self, i: int) -> bytes:
        if self.records is None:
            with open(self.files[i], "rb") as f:
                return f.read()
        return recordio.unpack(self.records.read(i))[1]


class PredictDataset(Dataset):
    """Item i: (i, [uint8 image per transform], None), or (i, None, reason) when it does not decode."""

    def __init__(self, sources: Sources, indices, transforms):
        self.sources, self.indices, self.transforms = sources, list(indices), transforms

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = self.indices[k]
        try:
            payload = self.sources.read(i)
            return i, [t(payload, 0) for t in self.transforms], None
        except Exception as exc:  # one bad file is one line of the output; the others go on
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return i, None, reason


def _collate(items):
    ok = [it for it in items if it[1] is not None]
    images = [torch.stack([it[1][t] for it in ok]) for t in range(len(ok[0][1]))] if ok else []
    return [it[0] for it in ok], images, [(it[0], it[2]) for it in items if it[1] is None]


def transforms_for(members, ten_crop: bool):
    """One evaluation transform per distinct input geometry, and each member's transform index."""
    keys, which = [], []
    for m in members:
        key = (m.meta["image_size"], m.meta["eval_resize"])
        if key not in keys:
            keys.append(key)
        which.append(keys.index(key))
    return [build_transform(False, size, resize, ten_crop) for size, resize in keys], which


def member_probs(member, images, env, amp: str, channels_last: bool) -> torch.Tensor:
    """Softmax of one member over a uint8 batch (ten-crop: averaged over the crops, as evaluate)."""
    mean = torch.tensor(member.meta["mean"], device=env.device).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(member.meta["std"], device=env.device).view(1, 3, 1, 1)
    x = normalize(images, mean, inv_std, env.device, torch.float32, channels_last)
    with torch.no_grad(), autocast(env, amp):
        if x.dim() == 5:
            b, c = x.shape[:2]
            return member.model(x.flatten(0, 1)).float().softmax(1).view(b, c, -1).mean(1)
        return member.model(x).float().softmax(1)


def predict_probs(members, sources: Sources, env, batch_size=64, workers=2, ten_crop=False, amp="off",
                  channels_last=False, progress=False, timeout=300.0):
    """This rank's slice: (indices, mean softmax over members [n, C] on CPU, [(index, reason)])."""
    n = len(sources)
    lo, hi = n * env.rank // env.world, n * (env.rank + 1) // env.world
    transforms, which = transforms_for(members, ten_crop)
    # workers as the evaluation loader's: from the fork server, set up alike, every wait bounded
    loader = DataLoader(PredictDataset(sources, range(lo, hi), transforms), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate,
                        timeout=worker_procs.wait_slice(timeout) if workers else 0,
                        multiprocessing_context=worker_procs.context() if workers else None,
                        worker_init_fn=worker_procs.worker_init, prefetch_factor=4 if workers else None)
    done, probs, failed = [], [], []
    with tqdm(total=n, desc="predict", unit="img", disable=not progress) as bar:
        for indices, images, errors in _bounded(loader, timeout):
            failed += errors
            if indices:
                p = sum(member_probs(m, images[t], env, amp, channels_last) for m, t in zip(members, which))
                done += indices
                probs.append((p / len(members)).cpu())
            bar.update((len(indices) + len(errors)) * env.world)
    num_classes = members[0].meta["num_classes"]
    return done, torch.cat(probs) if probs else torch.zeros(0, num_classes), failed


def _bounded(loader, timeout: float):
    """The loader's batches; a worker that died or gave no batch in time is one line (Stalled)."""
    try:
        it = iter(loader)
        while True:
            try:
                batch = worker_procs.next_batch(it, timeout)
            except StopIteration:
                return
            yield batch
    except (RuntimeError, ConnectionError, EOFError) as exc:
        stalled = worker_procs.stalled(exc, loader, "the images")
        if stalled is None:
            raise
        worker_procs.end_workers()
        raise stalled from None


def gather_rows(sources: Sources, done, probs, failed, class_names, top_k: int):
    """Rank 0: every rank's rows, in input order: {"path", "top": [(class, prob), ...]} or {"path", "error"}."""
    k = min(top_k, probs.shape[1])
    values, classes = probs.topk(k, dim=1) if len(probs) else (probs, probs.long())
    rows = [(i, {"path": sources.name(i), "top": [(class_names[c], float(v)) for c, v in
                                                   zip(classes[j].tolist(), values[j].tolist())]})
            for j, i in enumerate(done)]
    rows += [(i, {"path": sources.name(i), "error": reason}) for i, reason in failed]
    if tdist.is_initialized():
        every = [None] * tdist.get_world_size()
        tdist.all_gather_object(every, rows)
        rows = [r for part in every for r in part]
    return [r for _, r in sorted(rows, key=lambda ir: ir[0])]


def table_lines(rows) -> List[str]:
    width = min(max((len(r["path"]) for r in rows), default=4), 60)
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"{r['path']:<{width}}  not decodable: {r['error']}")
        else:
            out.append(f"{r['path']:<{width}}  " + "  ".join(f"{c} {p:.4f}" for c, p in r["top"]))
    return out


def json_rows(rows) -> list:
    return [{"path": r["path"], "error": r["error"]} if "error" in r else
            {"path": r["path"], "top": [{"class": c, "prob": p} for c, p in r["top"]]} for r in rows]


def write_outputs(rows, top_k: int, csv_path=None, json_file=None):
    if csv_path:
        k = top_k  # the caller's top-k, at most the class count: the same columns when nothing decodes
        records = []
        for r in rows:
            rec = {"path": r["path"]}
            for j in range(k):
                c, p = r["top"][j] if "top" in r and j < len(r["top"]) else ("", None)
                rec[f"class{j + 1}"], rec[f"prob{j + 1}"] = c, p
            rec["error"] = r.get("error", "")
            records.append(rec)
        write_csv(pd.DataFrame(records), csv_path)
    if json_file:
        os.makedirs(os.path.dirname(json_file) or ".", exist_ok=True)
        with atomic_open(json_file, "w") as f:
            json.dump(json_rows(rows), f, indent=1)


def run_predict(members, sources: Sources, env, top_k=5, csv_path=None, json_file=None, as_json=False, batch_size=64,
                workers=2, ten_crop=False, amp="auto", channels_last=None, quiet=False, timeout=300.0) -> int:
    cuda = env.device.type == "cuda"
    amp = ("bf16" if cuda else "off") if amp == "auto" else amp
    channels_last = cuda if channels_last is None else channels_last
    for m in members:
        m.model.to(env.device)
        if channels_last:
            m.model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    progress = env.main and sys.stderr.isatty() and len(sources) > batch_size
    done, probs, failed = predict_probs(members, sources, env, batch_size, workers, ten_crop, amp,
                                        channels_last, progress, timeout)
    rows = gather_rows(sources, done, probs, failed, members[0].meta["class_names"], top_k)
    seconds = time.perf_counter() - t0
    if not env.main:
        return 0
    if not quiet:
        with contextlib.suppress(BrokenPipeError):
            print("\n".join(table_lines(rows)), flush=True)
    write_outputs(rows, min(top_k, members[0].meta["num_classes"]), csv_path, json_file)
    bad = sum("error" in r for r in rows)
    print(f"{len(rows)} images ({bad} not decodable) in {seconds:.2f} s, {len(rows) / max(seconds, 1e-9):.1f} "
          f"images/s, world size {env.world}" + (f"; CSV {csv_path}" if csv_path else "")
          + (f"; JSON {json_file}" if json_file else ""), file=sys.stderr)
    if as_json:  # the last line of stdout, as tools/evaluate.py's --json
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps(json_rows(rows)), flush=True)
    return 0 if bad < len(rows) or not rows else 1


def run(inputs, prefix=None, epoch=None, checkpoint_path=None, ensemble=(), checkpoints_dir="checkpoints",
        data=None, split=None, root=None, **options) -> int:
    """tools/predict.py: check the inputs and models up front, then predict (see run_predict)."""
    from toolkit.inference.ensemble import load_members
    from toolkit.engine.meta import check_class_map
    from toolkit.inference.meta import resolve
    outputs = [(p, flag) for p, flag in ((options.get("csv_path"), "--csv"), (options.get("json_file"), "--json-file"))
               if p]
    for path, flag in outputs:
        writable_file(path, flag)
    if split and inputs:
        raise UserError(f"--split {split} predicts on the records of a split; leave out the image arguments")
    if not split and not inputs:
        raise UserError("nothing to predict: give image files, folders, globs or .lst lists, or --split NAME")
    if ensemble and (prefix or epoch is not None or checkpoint_path):
        raise UserError("--ensemble names its models itself; leave out --prefix, --epoch and --checkpoint")
    if checkpoint_path:
        specs = [resolve(checkpoint_path)]
    elif ensemble:
        specs = list(ensemble)
    else:
        specs = [resolve(prefix if epoch is None else f"{prefix}:{epoch}", checkpoints_dir) if prefix else
                 checkpoint.find(checkpoints_dir, None, epoch)]
    if options.get("as_json"):  # the old `--json PATH` (a path then, a switch now and in every tool)
        odd = next((a for a in inputs if not os.path.exists(a) and not _GLOB & set(a)), None)
        if odd:
            raise UserError(f"{odd}: no such image, folder or list; --json is a switch (the JSON as the last "
                            f"line of the output): to write the JSON to a file, --json-file {odd}")
    files = None if split else gather_files(inputs, root)
    for path, flag in outputs:  # never written over one of the images it reads
        not_an_input(path, flag, files or [])
    members = load_members(specs, checkpoints_dir, data)
    if split:  # the records' labels are numbers of the dataset's class map: it must be the model's
        check_class_map(members[0].meta, data or members[0].cfg.data, members[0].path)
    sources = Sources(files, data or members[0].cfg.data, split)
    env = dist.setup(options.get("timeout", 300.0))
    try:
        return run_predict(members, sources, env, **options)
    finally:
        dist.teardown()
