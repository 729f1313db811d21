"""Reader of MXNet symbol JSON (`PREFIX-symbol.json`), every era, upgraded as MXNet upgrades it on
load (src/nnvm/legacy_json_util.cc):

- a node's parameters are under `attrs` (MXNet >= 1.2), `attr` or `param` (older files): merged;
- an input is [node, output] or [node, output, version];
- a file without `mxnet_version` is MXNet 0.8's, which left auxiliary inputs (BatchNorm's moving
  mean and variance) out of the graph: they are added as variables named NODE_moving_mean/var, as
  MXNet's UpgradeJSON_000800_000900 does.

The result is a plain list of `Node`s in the file's (topological) order.
"""
import dataclasses
import json
from typing import Dict, List, Tuple

from toolkit.errors import UserError

# input names per operator (FListInputNames), for naming the inputs pre-0.9 files leave out
INPUT_NAMES = {"Convolution": ("data", "weight", "bias"), "FullyConnected": ("data", "weight", "bias"),
               "BatchNorm": ("data", "gamma", "beta", "moving_mean", "moving_var"),
               "LeakyReLU": ("data", "gamma")}


@dataclasses.dataclass
class Node:
    name: str
    op: str                       # "null" for a variable (an input or a weight)
    attrs: Dict[str, str]
    inputs: List[Tuple[int, int]]  # (node index, output index)


@dataclasses.dataclass
class Symbol:
    nodes: List[Node]
    heads: List[Tuple[int, int]]
    version: int                  # MXNet's version number that wrote it (10901 for 1.9.1; 800 if unstated)


def _version(doc: dict) -> int:
    attrs = doc.get("attrs") or {}
    value = attrs.get("mxnet_version")
    if isinstance(value, list) and len(value) == 2:
        return int(value[1])
    return 800  # MXNet assumes 0.8.0 for a file that does not say


def parse_symbol(text: str, path: str = "symbol.json") -> Symbol:
    try:
        doc = json.loads(text)
        raw_nodes = doc["nodes"]
        heads = [(int(h[0]), int(h[1])) for h in doc["heads"]]
        nodes = []
        for i, raw in enumerate(raw_nodes):
            attrs = {}
            for key in ("param", "attr", "attrs"):  # later keys win, as nnvm's loader reads them
                attrs.update({str(k): str(v) for k, v in (raw.get(key) or {}).items()})
            inputs = [(int(e[0]), int(e[1])) for e in raw.get("inputs", [])]
            if any(j >= i for j, _ in inputs):
                raise ValueError(f"node {i} takes an input from a later node")
            nodes.append(Node(str(raw["name"]), str(raw["op"]), attrs, inputs))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: not an MXNet symbol file ({type(exc).__name__}: {exc}); pass the "
                        "PREFIX-symbol.json written by mx.model.save_checkpoint or net.export") from None
    sym = Symbol(nodes, heads, _version(doc))
    if sym.version < 900:
        _add_aux_inputs(sym)
    return sym


def _add_aux_inputs(sym: Symbol):
    """MXNet < 0.9 kept auxiliary states out of the JSON: add their variables (appended at the end,
    so the other nodes keep their indices; order does not matter for variables)."""
    for node in list(sym.nodes):
        names = INPUT_NAMES.get(node.op)
        if node.op != "BatchNorm" or not names or len(node.inputs) >= len(names):
            continue
        for arg in names[len(node.inputs):]:
            sym.nodes.append(Node(f"{node.name}_{arg}", "null", {}, []))
            node.inputs.append((len(sym.nodes) - 1, 0))
    # variables appended after their consumers: move them to the front keeps a topological order
    order = [i for i, n in enumerate(sym.nodes) if n.op == "null"] + \
            [i for i, n in enumerate(sym.nodes) if n.op != "null"]
    where = {old: new for new, old in enumerate(order)}
    sym.nodes = [sym.nodes[i] for i in order]
    for n in sym.nodes:
        n.inputs = [(where[j], k) for j, k in n.inputs]
    sym.heads = [(where[j], k) for j, k in sym.heads]


def read_symbol(path: str) -> Symbol:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the symbol file ({exc.strerror}); MXNet writes it as "
                        "PREFIX-symbol.json beside PREFIX-NNNN.params") from None
    return parse_symbol(text, path)


def output_names(sym: Symbol) -> List[str]:
    """Every output a user may pick with --output, as MXNet names them (NODE_output)."""
    return [f"{n.name}_output" for n in sym.nodes if n.op != "null"]
