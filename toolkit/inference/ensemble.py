"""Ensembles: the mean of the softmax outputs of several checkpoints (any recipes, same classes).

`tools/evaluate.py --ensemble P1:E1 P2:E2 ...` evaluates each member with the engine's own
evaluation (trainer.make_eval_loader and trainer.evaluate: each member's own input size and
resize, ten-crop composing), keeping this rank's softmax per image on the way, then scores the
mean softmax through the same trainer.evaluate, so the ensemble's rank-1/rank-5, per-class table
and confusion are exact across ranks as evaluate's are.
"""
import os
import re
import sys
from typing import List

import pandas as pd
import torch
import torch.nn as nn

from toolkit.cli import emit_json
from toolkit.engine import dist, preflight
from toolkit.engine.config import override
from toolkit.engine.evaluation import class_words, per_class_table, write_csv
from toolkit.engine.passes import evaluate, make_eval_loader
from toolkit.engine.run import raise_stalled
from toolkit.errors import UserError
from toolkit.engine.meta import check_class_map
from toolkit.engine.model import load_member
from toolkit.inference.meta import check_same_classes, resolve

_MEMBER = re.compile(r"^[^-].*(:\d+|\.pt)$")


def expand_members(argv: List[str], flag: str = "--ensemble", positional: bool = True) -> List[str]:
    """`--ensemble A:1 B:2 c.pt` -> `--ensemble A:1 --ensemble B:2 --ensemble c.pt`: a click option
    takes one value, so the arguments after the flag that are members are given it one by one. The
    first argument after the flag is always a member; then, for a tool without arguments of its own
    (`positional=False`, tools/evaluate.py) every argument up to the next option, else those that
    look like members (PREFIX:EPOCH, a .pt path) or name a run of the checkpoints folder (PREFIX: its
    newest checkpoint; `--ensemble A:10 A`)."""
    runs = _run_names(argv) if positional else set()
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == flag and i + 1 < len(argv):
            out.append(argv[i + 1])
            i += 2
            while i < len(argv) and not argv[i].startswith("-") and \
                    (not positional or _MEMBER.match(argv[i]) or argv[i] in runs):
                out += [flag, argv[i]]
                i += 1
            continue
        i += 1
    return out


def _run_names(argv: List[str]) -> set:
    """The run prefixes of --checkpoints-dir (as given in argv, else checkpoints/), that are not files."""
    from toolkit.engine.checkpoint import list_checkpoints
    folder = next((argv[k + 1] for k in range(len(argv) - 1) if argv[k] == "--checkpoints-dir"), "checkpoints")
    names = set(list_checkpoints(folder)) if os.path.isdir(folder) else set()
    return {n for n in names if not os.path.exists(n)}


def load_members(specs, checkpoints_dir: str, data=None):
    members = [load_member(resolve(s, checkpoints_dir), data) for s in specs]
    check_same_classes(members)
    return members


class _Tap(nn.Module):
    """The member's network, keeping the softmax of every forward (float32, as evaluate takes it)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.probs = model, []

    def forward(self, x):
        out = self.model(x)
        self.probs.append(out.detach().float().softmax(1))
        return out


class _TapLoader:
    """The loader, keeping the labels of every batch."""

    def __init__(self, loader):
        self.loader, self.labels = loader, []

    def set_epoch(self, *args):
        self.loader.set_epoch(*args)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            self.labels.append(y)
            yield x, y


class _Replay:
    """Precomputed log mean-softmax and labels, as batches for trainer.evaluate (with nn.Identity)."""

    def __init__(self, log_probs, labels, batch_size=1024):
        self.x, self.y, self.batch_size = log_probs, labels, batch_size

    def set_epoch(self, *args):
        pass

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.y), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]


def evaluate_member(member, env, data, split, batch_size, backend, workers, ten_crop):
    """trainer.evaluate of one member, and this rank's per-image softmax [n, C] and labels [n]."""
    model = member.model.to(env.device)
    if member.cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    tap, loader = _Tap(model), _TapLoader(make_eval_loader(member.cfg, env, data, split, batch_size,
                                                           backend, workers, ten_crop))
    result = evaluate(tap, loader, env, member.meta["num_classes"], member.cfg.amp)
    probs = torch.cat(tap.probs) if tap.probs else torch.zeros(0, member.meta["num_classes"], device=env.device)
    if ten_crop:  # evaluate fed the crops through the network; average them as it does
        probs = probs.view(-1, 10, probs.shape[1]).mean(1)
    labels = torch.cat(loader.labels) if loader.labels else torch.zeros(0, dtype=torch.int64, device=env.device)
    return result, probs, labels


def ensemble_log_probs(prob_list) -> torch.Tensor:
    """log of the mean softmax (clamped away from log 0)."""
    mean = torch.stack(prob_list).mean(0)
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def _stem(members, split, ten_crop) -> str:
    names = "+".join(os.path.splitext(os.path.basename(m.path))[0] for m in members)
    return f"ensemble-{names[:120]}-{split}" + ("-10crop" if ten_crop else "")


def report(members, results, ens, data, split, ten_crop, out_dir, env) -> dict:
    stem = _stem(members, split, ten_crop)
    per_class_csv = os.path.join(out_dir, stem + "-per-class.csv")
    confusion_csv = os.path.join(out_dir, stem + "-confusion.csv")
    confusion = ens["confusion"].numpy()
    names = members[0].meta["class_names"]
    table = per_class_table(confusion, names, class_words(data, names))
    write_csv(table, per_class_csv)
    labels = list(table["name"])
    write_csv(pd.DataFrame(confusion, index=pd.Index(labels, name="true\\predicted"), columns=labels),
              confusion_csv, index=True)
    rows = [(m.path, r) for m, r in zip(members, results)] + [(f"ensemble (mean softmax of {len(members)})", ens)]
    width = max(len(name) for name, _ in rows)
    crops = "10-crop" if ten_crop else "centre crop"
    print(f"{data} split {split} ({crops}, {ens['images']} images, world size {env.world})")
    print(f"{'model':<{width}}  rank-1  rank-5  cross-entropy")
    for name, r in rows:
        print(f"{name:<{width}}  {r['accuracy']:.4f}  {r['top_k_accuracy_5']:.4f}  {r['cross-entropy']:.4f}")
    print(f"ensemble per-class precision/recall/F1: {per_class_csv}\nensemble confusion matrix: {confusion_csv}")
    return {"rank1": ens["accuracy"], "rank5": ens["top_k_accuracy_5"], "cross_entropy": ens["cross-entropy"],
            "images": ens["images"], "split": split, "ten_crop": ten_crop,
            "members": [{"checkpoint": m.path, "rank1": r["accuracy"], "rank5": r["top_k_accuracy_5"]}
                        for m, r in zip(members, results)],
            "per_class_csv": per_class_csv, "confusion_csv": confusion_csv}


def run_ensemble_evaluation(specs, checkpoints_dir="checkpoints", data=None, split="val", ten_crop=False,
                            batch_size=None, loader="auto", workers=2, out_dir=None, as_json=False,
                            timeout=300.0, json_file=None) -> int:
    if len(specs) < 2:
        raise UserError("--ensemble needs two or more models (PREFIX:EPOCH or .pt paths)")
    env = dist.setup(timeout)
    try:
        members = load_members(specs, checkpoints_dir)
        for m in members:
            m.cfg = override(m.cfg, timeout=timeout)
        data = data or members[0].cfg.data
        num_classes = members[0].meta["num_classes"]
        preflight.on_main(env, lambda: check_class_map(members[0].meta, data, members[0].path))
        preflight.check_eval_labels(data, split, num_classes, members[0].path, env)
        out_dir = out_dir or members[0].cfg.logs_dir
        preflight.on_main(env, lambda: preflight.writable_dir(out_dir, "--out-dir"))  # before the passes
        if json_file:
            preflight.on_main(env, lambda: preflight.writable_file(json_file, "--json-file"))
        results, probs, labels = [], [], None
        for m in members:
            result, p, y = evaluate_member(m, env, data, split, batch_size, loader, workers, ten_crop)
            results.append(result)
            probs.append(p)
            if labels is not None and not torch.equal(labels, y):  # same split, same order: a bug otherwise
                raise RuntimeError(f"{m.path}: its loader gave other labels than the first member's")
            labels = y
            m.model.cpu()
        ens = evaluate(nn.Identity(), _Replay(ensemble_log_probs(probs), labels), env, num_classes)
        if not env.main:
            return 0
        summary = report(members, results, ens, data, split, ten_crop, out_dir, env)
        emit_json(summary, as_json, json_file)
        sys.stdout.flush()
        return 0
    except RuntimeError as exc:  # a loader worker or a rank that stopped answering: one line
        raise_stalled(exc, env, timeout)
    finally:
        dist.teardown()
