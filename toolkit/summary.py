"""Model summary: a per-layer table (output shape, parameters, MACs), total parameters and MACs; and
the one `--list-layers` table of every named module (tools/visualize.py, tools/extract_features.py).

MACs come from torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2 for convolutions and
matrix products), which counts what actually runs; per-layer output shapes from forward hooks.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def _leaf_rows(model: nn.Module, x: torch.Tensor) -> List[Dict]:
    rows, hooks = [], []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            def hook(m, inp, out, name=name):
                shape = tuple(out.shape) if torch.is_tensor(out) else tuple(out[0].shape)
                rows.append({"layer": name, "type": type(m).__name__, "output": shape,
                             "params": sum(p.numel() for p in m.parameters(recurse=False))})
            hooks.append(mod.register_forward_hook(hook))
    forward_with_hooks(model, x, hooks)
    return rows


def forward_with_hooks(model: nn.Module, x: torch.Tensor, hooks):
    """One forward pass without gradients; the (already registered) hooks removed after it."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()


def summarize(model: nn.Module, image_size: int) -> Dict:
    """{'rows': [...], 'params': int, 'macs': int} for one 3 x S x S image in eval mode."""
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    rows = _leaf_rows(model, x)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    per_module = counter.get_flop_counts()  # keyed "ClassName.path.to.module"
    root = type(model).__name__
    for row in rows:
        row["macs"] = sum(per_module.get(f"{root}.{row['layer']}", {}).values()) // 2
    return {"rows": rows, "params": sum(p.numel() for p in model.parameters()),
            "macs": counter.get_total_flops() // 2}


def format_table(summary: Dict) -> str:
    lines = [f"{'layer':40s} {'type':18s} {'output':>20s} {'params':>12s} {'MACs':>14s}"]
    for r in summary["rows"]:
        lines.append(f"{r['layer'][:40]:40s} {r['type'][:18]:18s} {str(r['output']):>20s} "
                     f"{r['params']:>12,d} {r['macs']:>14,d}")
    lines.append(f"total parameters: {summary['params']:,d}")
    lines.append(f"multiply-accumulates: {summary['macs']:,d} ({summary['macs'] / 1e9:.2f} G)")
    return "\n".join(lines)


def layer_rows(model: nn.Module, image_size: int, device=None) -> List[Dict]:
    """Every named module in registration order: its type, output shape for one image (C x H x W,
    "-" where it does not run in evaluation) and parameters."""
    outs, hooks = {}, []
    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: outs.setdefault(name, o[0] if isinstance(o, (tuple, list)) else o)))
    model.eval()
    forward_with_hooks(model, torch.zeros(1, 3, image_size, image_size, device=device), hooks)
    return [{"layer": n, "type": type(m).__name__,
             "output": "x".join(map(str, outs[n].shape[1:])) if torch.is_tensor(outs.get(n)) else "-",
             "parameters": sum(p.numel() for p in m.parameters())} for n, m in model.named_modules() if n]


def format_layers(rows: List[Dict], marks: Optional[Dict[str, str]] = None) -> str:
    """The --list-layers table; `marks`: a note after a layer's line (the default --layer)."""
    marks = marks or {}
    width = max([len("layer")] + [len(r["layer"]) for r in rows])
    lines = [f"{'layer':<{width}}  {'type':<20} {'output':<16} parameters"]
    lines += [f"{r['layer']:<{width}}  {r['type']:<20} {r['output']:<16} {r['parameters']}"
              + (f"   <- {marks[r['layer']]}" if r["layer"] in marks else "") for r in rows]
    return "\n".join(lines)
