"""tools/extract_features.py: a layer's outputs over a split, streamed to disk on every rank.

Each rank of a torchrun job reads its contiguous share of the split in record order (the evaluation
sampler) and writes its rows into a .npy of its own as they come (numpy's open_memmap: nothing of a
split is held in memory); rank 0 then joins the parts, in rank order, into OUT.npy (float32,
images x features), with OUT.labels.npy (int64), OUT.ids.npy (the records' .idx keys: the .lst
image ids) and OUT.json (source, layer, split, counts) beside it, each written under a temporary
name and renamed. So the features of 1 and of N processes are the same file.

A layer is a module name (`--list-layers`); its output is taken with a forward hook that stops the
forward pass there (nothing after it runs). Default: the input of the classifier (the layer before
it). Spatial outputs are average-pooled over height and width unless --pool none (then flattened).
"""
import contextlib
import json
import os
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from toolkit.atomic import atomic_open, atomic_path
from toolkit.data import dataset_info, open_split
from toolkit.engine import checkpoint, dist
from toolkit.errors import UserError
from toolkit.summary import format_layers, layer_rows
from toolkit.transfer.freeze import head_keys, head_module
from toolkit.transfer.hook import Transfer
from toolkit.transfer.weights import Source, read_source

JOIN_ROWS = 1 << 14  # rows copied at a time when joining the parts


class _Reached(Exception):
    """Raised by the hook: the wanted layer has run, the rest of the forward pass need not."""


def layer_table(model: nn.Module, image_size: int, default: str) -> str:
    """The --list-layers table (toolkit/summary.py, as tools/visualize.py's); the default layer marked."""
    return format_layers(layer_rows(model, image_size), {default: "its input is the default --layer"})


class LayerOutput:
    """model(x) -> the chosen layer's output (before=True: the input of `layer`), pooled or flattened."""

    def __init__(self, model: nn.Module, layer: str, before: bool, pool: str = "avg"):
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            raise UserError(f"--layer {layer}: no such layer in this model; tools/extract_features.py "
                            "--list-layers names them")
        self.model, self.pool, self.box = model, pool, {}
        target = modules[layer]
        if before:
            self.handle = target.register_forward_pre_hook(lambda m, args: self._keep(args[0]))
        else:
            self.handle = target.register_forward_hook(lambda m, args, out: self._keep(out))

    def _keep(self, value):
        self.box["x"] = value[0] if isinstance(value, (tuple, list)) else value
        raise _Reached

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(_Reached):
            self.model(x)
        out = self.box.pop("x").float()
        if out.dim() == 4 and self.pool == "avg":
            out = out.mean((2, 3))
        return out.flatten(1)


def _part(out: str, rank: int, world: int) -> str:
    return f"{out}.part{rank:05d}-of-{world:05d}.npy"


def write_rank_part(fn: LayerOutput, loader, path: str, image_size: int) -> int:
    """This rank's rows, written as they come; returns the feature width. A rank with no records (a
    split smaller than the world) writes an empty part of the width a probe image gives."""
    rows, array, labels = loader.num_samples, None, [np.zeros(0, np.int64)]
    at = 0
    loader.set_epoch(0)
    with torch.no_grad():
        for x, y in loader:
            f = fn(x).cpu().numpy()
            if array is None:
                array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, f.shape[1]))
            array[at:at + len(f)] = f
            labels.append(y.cpu().numpy())
            at += len(f)
        if array is None:
            probe = torch.zeros(1, 3, image_size, image_size, device=next(fn.model.parameters()).device)
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(0, fn(probe).shape[1]))
    array.flush()
    _all_decoded(rows - at, loader)
    np.save(path[:-4] + ".labels.npy", np.concatenate(labels).astype(np.int64))
    return array.shape[1]


def _all_decoded(missing: int, loader):
    """Every rank stops together (one line) when a record did not decode: evaluation leaves it out,
    and the features would no longer line up with the image ids."""
    total = int(dist.all_reduce_sum(torch.tensor([float(missing)]))[0])
    if total:
        bad = getattr(loader, "undecodable_records", lambda: [])()
        raise UserError(f"{total} records of the split do not decode{f' (e.g. {bad[0]})' if bad else ''}; "
                        "features would not line up with the image ids: check the split with "
                        "tools/im2rec.py --verify PREFIX")


def join_parts(out: str, world: int, total: int, width: int, ids: np.ndarray, meta: dict):
    """Rank 0: the parts, in rank order, into OUT.npy (and labels, ids, json); the parts removed."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    labels = np.concatenate([np.load(_part(out, r, world)[:-4] + ".labels.npy") for r in range(world)])
    for name, values in ((".labels.npy", labels), (".ids.npy", ids)):
        with atomic_open(out + name, "wb") as f:
            np.save(f, values)
    with atomic_path(out + ".npy") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, width))
        at = 0
        for r in range(world):
            part = np.load(_part(out, r, world), mmap_mode="r")
            for i in range(0, len(part), JOIN_ROWS):
                chunk = part[i:i + JOIN_ROWS]
                array[at:at + len(chunk)] = chunk
                at += len(chunk)
        array.flush()
        del array
    with atomic_open(out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    for r in range(world):
        for suffix in (".npy", ".labels.npy"):
            os.remove(_part(out, r, world)[:-4] + suffix)


def record_ids(data: str, split: str) -> np.ndarray:
    """Every record's .idx key (im2rec writes the .lst id there), in the split's order."""
    records = open_split(data, split)
    return np.array([records.readers[s].keys[i] for s, i in zip(records.shard, records.local)], dtype=np.int64)


def feature_config(init_from: Optional[str], prefix, epoch, checkpoints_dir: str, recipe: Optional[str],
                   data: Optional[str], model_flags: Dict, env, list_only: bool = False):
    """(cfg, source): the model to extract from. SOURCE is --init-from, else the checkpoint
    --prefix/--epoch names; without either, --list-layers needs only --recipe."""
    from toolkit.cli import MODEL_KEYS
    from toolkit.engine.config import make_config
    from toolkit.transfer.hook import read_on_every_rank
    flags = {k: v for k, v in model_flags.items() if v is not None}
    if list_only and not init_from and recipe:
        return make_config(recipe, data=data, **{"num_classes": 1000, **flags}), None
    if not init_from and not (prefix or os.path.isdir(checkpoints_dir)) and not list_only:
        raise UserError("give the model: --prefix/--epoch (a run's checkpoint) or --init-from SOURCE with --recipe")
    text = init_from or checkpoint.find(checkpoints_dir, prefix, epoch)
    source = read_on_every_rank(text, env)
    if source.kind == "checkpoint":
        saved = source.config
        keep = {k: saved.get(k) for k in MODEL_KEYS + ("eval_resize",)}
        cfg = make_config(recipe or saved["recipe"], data=data or saved.get("data"), init_from=text,
                          **{**keep, **flags})
    else:
        if not recipe:
            raise UserError(f"--init-from {text}: give the --recipe these weights are for "
                            "(torchvision's resnet50 -> resnet50, alexnet -> alexnet_owt, googlenet -> googlenet_bn)")
        cfg = make_config(recipe, data=data, init_from=text, **{"num_classes": 1000, **flags})
    return cfg, source


def run_extraction(out: str, layer: Optional[str], split: str, pool: str, batch_size, loader: str,
                   workers: int, list_layers: bool, init_from, prefix, epoch, checkpoints_dir: str,
                   recipe, data, **model_flags) -> int:
    from toolkit.engine.model import prepare_model
    from toolkit.engine.passes import make_eval_loader
    env = dist.setup()
    try:
        cfg, source = feature_config(init_from, prefix, epoch, checkpoints_dir, recipe, data, model_flags,
                                     env, list_only=list_layers)
        transfer = Transfer(cfg, env, fresh=True, source=source)
        cfg = transfer.resolve(cfg, head_used=False) if source is not None else cfg
        model = prepare_model(cfg, env)
        head = head_keys(cfg.recipe, cfg.model_kwargs(), model)
        if list_layers:
            if env.main:
                print(layer_table(model, cfg.image_size, head_module(model, head)))
            return 0
        if not out:
            raise UserError("--out PATH is needed: features go to PATH.npy, labels and ids beside it")
        chosen, before = (layer, False) if layer else (head_module(model, head), True)
        fn = LayerOutput(model, chosen, before, pool)  # checked before the weights are read in
        transfer.attach(model, cfg)
        model.eval()
        if env.main:
            for line in transfer.lines:
                print(line, flush=True)
        data_loader = make_eval_loader(cfg, env, cfg.data, split, batch_size, loader, workers)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        width = write_rank_part(fn, data_loader, _part(out, env.rank, env.world), cfg.image_size)
        dist.barrier()
        if env.main:
            ids = record_ids(cfg.data, split)
            what = f"the input of {chosen}" if before else chosen
            meta = {"source": cfg.init_from, "recipe": cfg.recipe, "layer": what, "pool": pool,
                    "data": cfg.data, "split": split, "images": len(ids), "features": width,
                    "image_size": cfg.image_size, "mean": list(cfg.mean), "std": list(cfg.std),
                    "class_names": dataset_info(cfg.data).class_names}  # the labels' names (classes.tsv)
            join_parts(out, env.world, len(ids), width, ids, meta)
            print(f"features of {what} over {cfg.data} split {split}: {out}.npy ({len(ids)} x {width} float32, "
                  f"world size {env.world}); labels {out}.labels.npy, image ids {out}.ids.npy, {out}.json")
        return 0
    finally:
        dist.teardown()
