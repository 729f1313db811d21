"""GraphNet: an imported MXNet graph as a PyTorch module, built from the graph stored as data.

Why a module per node run by a small interpreter (not torch.fx code generation): the graph stays
plain data in the checkpoint (JSON-able, no pickled code), every node is a named submodule (so
forward hooks, --freeze-until, --layer and the layer lists of the other tools see MXNet's names),
and torch.export / ONNX export trace the interpreter into a flat graph anyway.

The graph (GRAPH_FORMAT), as tools/import_mxnet.py stores it in the checkpoint's configuration:
    {"format": "mxnet-graph/1", "input": "data", "output": [NODE, OUTPUT],
     "head": NODE (the classifier whose outputs are the classes), "classes": N,
     "nodes": [{"name", "op", "attrs": {MXNet's strings}, "inputs": [[NODE or "data", OUTPUT]],
                "weights": {torch name: {"mxnet": MXNet name, "shape": [...]}}}, ...]}
"""
import json
import re
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from toolkit.mxnet_import.ops import make_module

GRAPH_FORMAT = "mxnet-graph/1"


def module_name(name: str) -> str:
    """A node's name as a submodule name (no dots; not one of nn.Module's attributes)."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    return name + "_" if hasattr(nn.Module, name) or name[0].isdigit() else name


def with_classes(graph: dict, num_classes: Optional[int]) -> dict:
    """The graph with its head resized to `num_classes` outputs (a new head for another dataset)."""
    if not num_classes or num_classes == graph["classes"]:
        return graph
    graph = json.loads(json.dumps(graph))
    for node in graph["nodes"]:
        if node["name"] == graph["head"]:
            key = "num_hidden" if node["op"] == "FullyConnected" else "num_filter"
            node["attrs"][key] = str(num_classes)
            for spec in node["weights"].values():
                spec["shape"][0] = num_classes
    graph["classes"] = num_classes
    return graph


class GraphNet(nn.Module):
    def __init__(self, graph: dict, num_classes: Optional[int] = None):
        super().__init__()
        if graph.get("format") != GRAPH_FORMAT:
            raise ValueError(f"not an imported MXNet graph (format {graph.get('format')!r})")
        graph = with_classes(graph, num_classes)
        self.input_name = graph["input"]
        self.output = tuple(graph["output"])
        self.steps = []  # (module name, input refs) in topological order
        for node in graph["nodes"]:
            shapes = {k: tuple(v["shape"]) for k, v in node["weights"].items()}
            name = module_name(node["name"])
            self.add_module(name, make_module(node["op"], node["attrs"], shapes))
            refs = [(r[0] if r[0] == self.input_name else module_name(r[0]), int(r[1])) for r in node["inputs"]]
            self.steps.append((name, refs))
        self.head = module_name(graph["head"])
        out = module_name(self.output[0])
        last = {r: i for i, (_, refs) in enumerate(self.steps) for r, _ in refs}  # a value's last reader
        self.done = [[r for r, j in last.items() if j == i and r != out] for i in range(len(self.steps))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: Dict[str, torch.Tensor] = {self.input_name: x}
        for (name, refs), done in zip(self.steps, self.done):
            values[name] = getattr(self, name)(*[values[r] for r, _ in refs])
            for r in done:  # dropped after its last reader: evaluation holds a few maps, not all
                del values[r]
        return values[module_name(self.output[0])]

    def trace_shapes(self, x: torch.Tensor) -> List[str]:
        """Run node by node; a node whose inputs do not fit raises ValueError naming it."""
        values = {self.input_name: x}
        for name, refs in self.steps:
            try:
                values[name] = getattr(self, name)(*[values[r] for r, _ in refs])
            except RuntimeError as exc:
                shapes = ", ".join("x".join(map(str, values[r].shape)) for r, _ in refs)
                raise ValueError(f"node {name} ({type(getattr(self, name)).__name__}) does not take its "
                                 f"input of shape {shapes}: {str(exc).splitlines()[0]}") from None
        return list(values)


def check_input_size(graph, size: int) -> str:
    """'' when the graph (a dict or its JSON text) runs on a size x size image, else what stops it
    (shapes only: on the meta device, nothing computed)."""
    try:
        with torch.device("meta"):
            net = GraphNet(json.loads(graph) if isinstance(graph, str) else graph)
            net.eval().trace_shapes(torch.zeros(1, 3, size, size))
    except ValueError as exc:
        return f"the graph does not run on a {size}x{size} image ({exc})"
    return ""
