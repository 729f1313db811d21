"""tools/import_mxnet.py's work: PREFIX-symbol.json + PREFIX-NNNN.params -> one of our checkpoints.

The checkpoint is the trainer's kind (toolkit/engine/checkpoint.py): "model" (GraphNet's state_dict),
"config" (recipe "mxnet", the graph as JSON text in `graph`, image size, classes, mean/std) and
"meta" (toolkit/inference/meta.py), so evaluate, predict, visualize, extract_features, export and
train.py --init-from take it as they take a checkpoint of ours (the recipe builds GraphNet from the
configuration's graph). Nothing is written before every check has passed.
"""
import json
import os
import time
from typing import List, Optional, Sequence

from toolkit.data.discovery import IMAGENET_MEAN, IMAGENET_STD
from toolkit.engine.config import make_config
from toolkit.engine.meta import describe
from toolkit.errors import UserError
from toolkit.lists import read_classes
from toolkit.mxnet_import.convert import build, convert
from toolkit.mxnet_import.params import read_params, split_arg_aux
from toolkit.mxnet_import.symbol import read_symbol

EXAMPLE_MEAN = (123.68, 116.779, 103.939)  # example/image-classification's --rgb-mean default (std 1)
NO_DATA = "(imported from MXNet: pass --data DIR)"  # the tools' default dataset: none, say so
SCALING_OPS = ("BatchNorm", "_minus_scalar", "_mul_scalar", "_div_scalar", "_plus_scalar", "_MinusScalar",
               "_MulScalar", "_DivScalar", "_PlusScalar", "broadcast_sub", "broadcast_mul", "broadcast_div")


def files(prefix: str, epoch: int):
    symbol, params = f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"
    if not os.path.isfile(symbol):
        alone = next((f for f in (prefix, f"{prefix}.params", params) if f.endswith(".params") and os.path.isfile(f)), "")
        if alone:  # weights without a graph: Gluon's save_parameters (or a checkpoint's symbol left behind)
            raise UserError(f"{alone}: weights without a graph ({symbol} not found; Gluon's save_parameters writes "
                            "no symbol); in MXNet build the net, net.load_parameters(that file), net.hybridize(), "
                            "run one batch, net.export(PREFIX, 0), then import PREFIX --epoch 0")
        raise UserError(f"{symbol}: not found; PREFIX is the path before -symbol.json "
                        "(e.g. models/resnet-18 for models/resnet-18-symbol.json)")
    if not os.path.isfile(params):
        near = sorted(f for f in os.listdir(os.path.dirname(prefix) or ".")
                      if f.startswith(os.path.basename(prefix) + "-") and f.endswith(".params"))
        raise UserError(f"{params}: not found; --epoch N picks PREFIX-NNNN.params"
                        + (f" (here: {', '.join(near[:5])})" if near else ""))
    return symbol, params


def input_scaling(graph: dict) -> str:
    """The operator that scales the raw input inside the graph ('' when the graph takes normalised
    input): a bn_data BatchNorm or a scalar/broadcast operator applied to the data first."""
    first = [n for n in graph["nodes"] if any(r[0] == graph["input"] for r in n["inputs"])]
    return next((f"{n['op']} {n['name']}" for n in first if n["op"] in SCALING_OPS), "")


def normalisation(graph, module: bool, mean, std):
    """(mean, std, where they come from): --mean/--std; for Gluon's exports ImageNet's (its model zoo's
    transforms; its ResNet v2 starts with a BatchNorm, on normalised input all the same); for Module
    checkpoints raw pixels where the graph scales its input (bn_data, _minus_scalar, ...), else
    example/image-classification's --rgb-mean default."""
    scaling = input_scaling(graph)
    if not module:
        base = (IMAGENET_MEAN, IMAGENET_STD, "ImageNet's, as Gluon's model zoo expects")
    elif scaling:
        base = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), f"raw 0-255 pixels: the graph scales its input ({scaling})")
    else:
        base = (EXAMPLE_MEAN, (1.0, 1.0, 1.0), "MXNet example/image-classification's --rgb-mean default")
    if mean or std:
        return tuple(mean or base[0]), tuple(std or base[1]), "--mean/--std"
    return base


def class_names(path: Optional[str], count: int) -> List[str]:
    if not path:
        return [str(i) for i in range(count)]
    try:
        if path.endswith(".tsv"):
            names = read_classes(path)
        else:  # the folder names a dataset's classes.tsv holds: the wnid of "n01440764 tench, Tinca tinca"
            with open(path, encoding="utf-8") as f:
                names = [line.split()[0] for line in f if line.strip()]
    except OSError as exc:
        raise UserError(f"--classes {path}: cannot read it ({exc.strerror})") from None
    if len(names) != count:
        raise UserError(f"--classes {path}: {len(names)} names, but the model has {count} classes; one "
                        "class a line in label order (MXNet's synset.txt: 'n01440764 tench, Tinca tinca'; "
                        "its first word is the name) or a classes.tsv")
    return names


def import_mxnet(prefix: str, epoch: int, output: Optional[str] = None, image_size: int = 224,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 classes: Optional[str] = None):
    """(checkpoint state, model, report lines); writes nothing."""
    start = time.time()
    symbol_path, params_path = files(prefix, epoch)
    sym = read_symbol(symbol_path)
    raw = read_params(params_path)
    graph, state = convert(sym, split_arg_aux(raw), output, symbol_path, params_path)
    gluon = any(n["name"].endswith("_fwd") for n in graph["nodes"])  # HybridBlock.export's node names
    if not graph["classes"]:
        raise UserError(f"{symbol_path}: no classifier (a FullyConnected or Convolution) feeds the output "
                        f"{graph['output'][0]}; pick the logits with --output NAME")
    model = build(graph, state, image_size)
    mean, std, origin = normalisation(graph, not gluon, mean, std)
    names = class_names(classes, graph["classes"])
    state = _checkpoint(graph, model, image_size, mean, std, names, prefix, epoch, origin)
    lines = [f"imported {symbol_path} (MXNet {sym.version // 10000}.{sym.version // 100 % 100}.{sym.version % 100}"
             f" symbol, {'Gluon export' if gluon else 'Module'}) + {params_path}: "
             f"{len(graph['nodes'])} nodes, {sum(v.numel() for v in state['model'].values()):,d} values",
             f"output {graph['output'][0]}_output (head {graph['head_op'] or 'none'} left out), classifier "
             f"{graph['head']} with {graph['classes']} classes",
             f"input {image_size}x{image_size} RGB, mean {_fmt(mean)} std {_fmt(std)}: {origin}",
             f"in {time.time() - start:.1f} s"]
    return state, model, lines


def _checkpoint(graph, model, image_size, mean, std, names, prefix, epoch, origin) -> dict:
    cfg = make_config("mxnet", graph=json.dumps(graph, separators=(",", ":")), image_size=image_size,
                      num_classes=graph["classes"], mean=tuple(mean), std=tuple(std),
                      prefix=os.path.basename(prefix), epochs=max(epoch, 1), data=NO_DATA)
    info = _Info(names, mean, std)
    meta = describe(cfg, info)
    meta["mxnet"] = {"prefix": prefix, "epoch": epoch, "output": graph["output"][0], "head": graph["head_op"],
                     "normalisation": origin, "channels": "RGB"}
    return {"model": model.state_dict(), "config": dict(vars(cfg)), "meta": meta, "epoch": epoch, "batch": 0,
            "position": float(epoch), "imported_from": "mxnet"}


class _Info:
    """What describe() reads of a dataset, here the imported model's own."""

    def __init__(self, names, mean, std):
        self.class_names, self.num_classes, self.mean, self.std = names, len(names), mean, std


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
