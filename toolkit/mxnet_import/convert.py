"""An MXNet symbol and its weights -> the graph as data (toolkit/mxnet_import/graph.py) and a
state_dict for GraphNet, with every mistake a user can make as one line (UserError)."""
import collections
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from toolkit.errors import UserError
from toolkit.mxnet_import.graph import GRAPH_FORMAT, GraphNet, check_input_size, module_name
from toolkit.mxnet_import.ops import HEADS, WEIGHTS, supported, value, weight_names
from toolkit.mxnet_import.symbol import Symbol


def pick_output(sym: Symbol, output: Optional[str]) -> Tuple[int, str]:
    """(node index, head op): --output NAME (NODE or NODE_output), else the symbol's first output;
    a softmax/regression head is stepped over to the logits that feed it."""
    if output:
        names = {n.name: i for i, n in enumerate(sym.nodes) if n.op != "null"}
        key = output[:-len("_output")] if output.endswith("_output") and output not in names else output
        if key not in names:
            choices = [f"{n.name}_output" for n in sym.nodes if n.op != "null"][-6:]
            raise UserError(f"--output {output}: no such output in the symbol; its last ones are "
                            f"{', '.join(choices)} (any NODE_output of the graph)")
        index = names[key]
    else:
        index = sym.heads[0][0]
    head = ""
    node = sym.nodes[index]
    if node.op in HEADS:
        head, index = node.op, node.inputs[0][0]
    return index, head


def needed(sym: Symbol, out: int) -> List[int]:
    seen, stack = set(), [out]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(j for j, _ in sym.nodes[i].inputs)
    return sorted(seen)


def check_ops(sym: Symbol, nodes: List[int], symbol_path: str):
    bad = collections.OrderedDict()
    for i in nodes:
        n = sym.nodes[i]
        if n.op != "null" and (not supported(n.op) or n.op in HEADS):
            bad.setdefault(n.op, []).append(n.name)
    if bad:
        parts = [f"{op} (node {names[0]}; {len(names)} node{'s' if len(names) > 1 else ''})" for op, names in bad.items()]
        raise UserError(f"{symbol_path}: operator{'s' if len(bad) > 1 else ''} not taken by the importer: "
                        f"{'; '.join(parts)}; pick an earlier output with --output NAME or ask for the operator")


def _weight_error(params_path, var, what, node, shape=None, want=None):
    if shape is None:
        return UserError(f"{params_path}: no weight {var} (the {what} of node {node}); the symbol and the "
                         ".params file do not belong together: pass the epoch and prefix they were saved with")
    return UserError(f"{params_path}: weight {var} (the {what} of node {node}) is {'x'.join(map(str, shape))}, "
                     f"but the node needs {want}; the symbol and the .params file do not belong together")


def check_shape(op, attrs, key, shape, shapes, fail):
    """Shapes the node's attributes fix: output count, kernel; the rest is checked by a forward."""
    out = value(attrs, "num_filter" if op == "Convolution" else "num_hidden")
    if op in ("Convolution", "FullyConnected") and key == "weight":
        if out is not None and shape[0] != int(out):
            raise fail(f"{out} outputs first")
        kernel = value(attrs, "kernel")
        if op == "Convolution" and kernel is not None and tuple(shape[2:]) != tuple(kernel):
            raise fail(f"a {'x'.join(map(str, kernel))} kernel")
    elif key != "weight" or op == "BatchNorm":
        first = shapes.get("weight", (shape[0],))
        if tuple(shape) != (first[0],):
            raise fail(f"shape {first[0]}")


def convert(sym: Symbol, params: Dict[str, np.ndarray], output: Optional[str], symbol_path: str,
            params_path: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(graph, state_dict) for the part of `sym` that computes the chosen output."""
    out, head_op = pick_output(sym, output)
    order = needed(sym, out)
    check_ops(sym, order, symbol_path)
    variables = [i for i in order if sym.nodes[i].op == "null"]
    inputs = [i for i in variables if sym.nodes[i].name == "data"] or \
             [i for i in variables if sym.nodes[i].name not in params][:1]
    data = sym.nodes[inputs[0]].name if inputs else "data"
    names = {i: (data if i in inputs else sym.nodes[i].name) for i in order}
    weight_vars = {j for i in order for j, _ in sym.nodes[i].inputs[1:]
                   if sym.nodes[i].op in WEIGHTS and sym.nodes[j].op == "null"}
    nodes, state = [], {}
    for i in order:
        n = sym.nodes[i]
        if n.op == "null":
            if i not in inputs and i not in weight_vars:  # a variable fed to an operator as data: a constant from the .params
                if n.name not in params:
                    raise _weight_error(params_path, n.name, "input", "the graph")
                nodes.append({"name": n.name, "op": "_constant", "attrs": {}, "inputs": [],
                              "weights": {"value": {"mxnet": n.name, "shape": list(params[n.name].shape)}}})
                state[f"{module_name(n.name)}.value"] = torch.from_numpy(params[n.name].astype(np.float32))
            continue
        node, tensors = _op_node(sym, n, params, params_path, names)
        nodes.append(node)
        state.update(tensors)
    head = _head(sym, out)
    graph = {"format": GRAPH_FORMAT, "input": data, "output": [sym.nodes[out].name, 0],
             "head": sym.nodes[head].name if head is not None else "", "head_op": head_op,
             "classes": _classes(nodes, head, sym), "nodes": nodes}
    return graph, state


def _op_node(sym, n, params, params_path, names):
    wanted = weight_names(n.op, n.attrs)
    torch_names = dict(WEIGHTS.get(n.op, []))
    data_inputs = n.inputs[:1] if n.op in WEIGHTS else n.inputs
    weights, tensors, shapes = {}, {}, {}
    for what, (j, _) in zip(wanted, n.inputs[1:]):
        var = sym.nodes[j].name
        if var not in params:
            raise _weight_error(params_path, var, what, n.name)
        array = params[var].astype(np.float32, copy=False)
        key = torch_names[what]
        fail = lambda want, var=var, what=what, array=array: _weight_error(  # noqa: E731
            params_path, var, what, n.name, array.shape, want)
        check_shape(n.op, n.attrs, key, array.shape, shapes, fail)
        shapes[key] = array.shape
        if n.op == "BatchNorm" and key == "weight" and value(n.attrs, "fix_gamma", True):
            array = np.ones_like(array)  # MXNet ignores a fixed gamma's stored value
        weights[key] = {"mxnet": var, "shape": list(array.shape)}
        tensors[f"{module_name(n.name)}.{key}"] = torch.from_numpy(array)
    for j, k in data_inputs:
        if k != 0:
            raise UserError(f"node {n.name} takes output {k} of {sym.nodes[j].name}; only first outputs are "
                            "taken by the importer")
    node = {"name": n.name, "op": n.op, "attrs": dict(n.attrs), "weights": weights,
            "inputs": [[names[j], k] for j, k in data_inputs]}
    return node, tensors


def _head(sym: Symbol, out: int) -> Optional[int]:
    """The classifier: the last node with weights on the way back from the output."""
    i = out
    while True:
        n = sym.nodes[i]
        if n.op in ("FullyConnected", "Convolution"):
            return i
        data = [j for j, _ in n.inputs if sym.nodes[j].op != "null"]
        if len(data) != 1:
            return None
        i = data[0]


def _classes(nodes, head, sym) -> int:
    if head is None:
        return 0
    node = next(n for n in nodes if n["name"] == sym.nodes[head].name)
    return int(node["weights"]["weight"]["shape"][0])


def build(graph: dict, state: Dict[str, torch.Tensor], image_size: int) -> GraphNet:
    """The module with the weights in place, checked by a forward pass of shapes on one image."""
    try:
        with torch.device("meta"):  # no initialisation drawn for weights that are read in next
            model = GraphNet(graph)
    except ValueError as exc:
        raise UserError(f"cannot rebuild the graph: {exc}") from None
    full = {k: state.get(k, torch.zeros((), dtype=torch.long) if k.endswith("num_batches_tracked") else None)
            for k in model.state_dict()}
    missing = [k for k, v in full.items() if v is None]
    if missing:
        raise UserError(f"the graph needs {missing[0]} but the .params file has no such weight")
    model.load_state_dict(full, assign=True)
    problem = check_input_size(graph, image_size)
    if problem:
        raise UserError(f"{problem}; pass --image-size as the model was trained")
    return model.eval()
