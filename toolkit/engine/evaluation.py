"""tools/evaluate.py: a checkpoint's rank-1/rank-5 accuracy over a split, exact across ranks, with
per-class precision/recall/F1 and the confusion matrix written as CSV (pandas)."""
import os

import numpy as np
import pandas as pd
import torch

from toolkit.atomic import atomic_open
from toolkit.cli import emit_json
from toolkit.engine import checkpoint, dist, preflight
from toolkit.engine.config import override
from toolkit.engine.passes import evaluate, make_eval_loader
from toolkit.engine.run import raise_stalled
from toolkit.lists import read_class_words, read_classes


def per_class_table(confusion: np.ndarray, names=None, words=None) -> pd.DataFrame:
    """Rows: true class; confusion[i, j] counts images of class i predicted as j. `words` (classes.tsv's
    third column: ImageNet's synset words) adds a column after the name."""
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    n = len(confusion)
    named = {"class": np.arange(n), "name": names if names and len(names) == n else [str(i) for i in range(n)]}
    if words:
        named["words"] = list(words[:n]) + [""] * (n - len(words))
    return pd.DataFrame({**named, "support": support, "predicted": predicted, "precision": precision,
                         "recall": recall, "f1": f1})


def class_words(data: str, names):
    """The words of each of `names` in the data's classes.tsv (its third column: ImageNet's synset
    words), "" for a name it lacks; None where it has no words."""
    path = os.path.join(data, "classes.tsv")
    words = read_class_words(path) if os.path.exists(path) else None
    if not words or not names:
        return None
    by_name = dict(zip(read_classes(path), words))
    return [by_name.get(n, "") for n in names]


def undecodable(loader, env) -> list:
    """Records of the split the evaluation left out (they do not decode), over every rank: where
    each is, in record order. Empty for a loader that does not flag them."""
    dataset = getattr(getattr(loader, "loader", None), "dataset", None)
    flags = getattr(dataset, "undecodable", None)
    if flags is None:
        return []
    flags = dist.all_reduce_max(flags.to(env.device, torch.int32)).cpu()
    return [dataset.records.where(int(j)) for j in torch.nonzero(flags).flatten()]


def write_csv(df: pd.DataFrame, path: str, index: bool = False):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_open(path, "w", newline="") as f:
        df.to_csv(f, index=index, float_format="%.6f")


def report(path: str, names, data: str, split: str, ten_crop: bool, result: dict, out_dir: str, world: int,
           as_json=False, json_file=None):
    """The evaluation's CSVs (per class, confusion matrix), its lines and its JSON."""
    left_out = result["undecodable"]
    stem = os.path.splitext(os.path.basename(path))[0] + f"-{split}" + ("-10crop" if ten_crop else "")
    per_class_csv = os.path.join(out_dir, stem + "-per-class.csv")
    confusion_csv = os.path.join(out_dir, stem + "-confusion.csv")
    confusion = result["confusion"].numpy()
    table = per_class_table(confusion, names, class_words(data, names))
    write_csv(table, per_class_csv)
    labels = list(table["name"])
    write_csv(pd.DataFrame(confusion, index=pd.Index(labels, name="true\\predicted"), columns=labels),
              confusion_csv, index=True)
    crops = "10-crop" if ten_crop else "centre crop"
    print(f"{path} on {data} split {split} ({crops}, {result['images']} images, world size {world}): "
          f"rank-1 {result['accuracy']:.4f}, rank-5 {result['top_k_accuracy_5']:.4f}, "
          f"cross-entropy {result['cross-entropy']:.4f}")
    if left_out:
        print(f"{len(left_out)} undecodable record(s) not counted: {'; '.join(left_out[:5])}"
              + (f"; ... ({len(left_out) - 5} more)" if len(left_out) > 5 else ""))
    worst = table.sort_values("f1").head(5)
    print("lowest F1: " + ", ".join(f"{getattr(r, 'words', None) or r.name} {r.f1:.3f}"
                                    for r in worst.itertuples()))
    print(f"per-class precision/recall/F1: {per_class_csv}\nconfusion matrix: {confusion_csv}")
    emit_json({"rank1": result["accuracy"], "rank5": result["top_k_accuracy_5"],
               "cross_entropy": result["cross-entropy"], "images": result["images"],
               "undecodable": len(left_out), "undecodable_records": left_out,
               "checkpoint": path, "split": split, "ten_crop": ten_crop,
               "per_class_csv": per_class_csv, "confusion_csv": confusion_csv}, as_json, json_file)


def run_evaluation(checkpoints_dir="checkpoints", prefix=None, epoch=None, data=None, split="val",
                   ten_crop=False, batch_size=None, loader="auto", workers=2, out_dir=None,
                   as_json=False, timeout=300.0, json_file=None) -> int:
    env = dist.setup(timeout)
    try:
        from toolkit.engine.meta import check_class_map
        from toolkit.engine.model import load_member
        path = checkpoint.find(checkpoints_dir, prefix, epoch)
        member = load_member(path, data)  # normalisation, input size, class names: the checkpoint's
        cfg = override(member.cfg, timeout=timeout)
        data = data or cfg.data
        num_classes = member.meta["num_classes"]  # may be above classes.tsv's count: training allows it
        preflight.on_main(env, lambda: check_class_map(member.meta, data, path))
        preflight.check_eval_labels(data, split, num_classes, path, env)
        out_dir = out_dir or cfg.logs_dir
        preflight.on_main(env, lambda: preflight.writable_dir(out_dir, "--out-dir"))
        if json_file:
            preflight.on_main(env, lambda: preflight.writable_file(json_file, "--json-file"))
        model = member.model.to(env.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        val_loader = make_eval_loader(cfg, env, data, split, batch_size, loader, workers, ten_crop)
        result = evaluate(model, val_loader, env, num_classes, cfg.amp)
        result["undecodable"] = undecodable(val_loader, env)
        if not env.main:
            return 0
        report(path, member.meta["class_names"], data, split, ten_crop, result, out_dir, env.world,
               as_json, json_file)
        return 0
    except RuntimeError as exc:  # a loader worker or a rank that stopped answering: one line
        raise_stalled(exc, env, timeout)
    finally:
        dist.teardown()
