"""What each layer sees: the names of a model's layers with their output shapes, and the feature
maps of chosen layers for one image (forward hooks: they work on every recipe, where torch.fx-based
feature extraction would need traceable models and name functional ops differently)."""
import math

import pandas as pd
import torch

from toolkit.errors import UserError
from toolkit.summary import format_layers, forward_with_hooks, layer_rows
from toolkit.visualize import figures
from toolkit.visualize.images import eval_views


def capture(model, x: torch.Tensor, names):
    """{name: output} of the named modules for one forward pass (no gradients)."""
    modules = dict(model.named_modules())
    seen, hooks = {}, []
    for name in names:
        hooks.append(modules[name].register_forward_hook(
            lambda m, i, o, name=name: seen.setdefault(name, o[0] if isinstance(o, (tuple, list)) else o)))
    forward_with_hooks(model, x, hooks)
    return seen


def layer_table(run) -> str:
    """The --list-layers table of the run's model at its input size (toolkit/summary.py)."""
    return format_layers(layer_rows(run.model, run.image_size, run.device))


def activations(run, sample, layer_names, max_channels: int = 32, cols: int = 8):
    """(figure, table): the image as the network saw it, then for each layer up to `max_channels`
    of its feature maps (each scaled to its own range), strongest mean activation first."""
    for name in layer_names:
        run.module(name, "--layers")  # a name that does not exist: one line, before any work
    view = eval_views(run, [sample])
    outs = capture(run.model, run.normalize(view), layer_names)
    for name in layer_names:
        if not torch.is_tensor(outs.get(name)):
            raise UserError(f"--layers {name}: no tensor output in evaluation (a layer used only in "
                            "training, or one returning something else); choose another layer")
    blocks, rows_table = [], []
    for name in layer_names:
        a = outs[name][0].detach().float().cpu()
        a = a.view(1, 1, -1) if a.dim() == 1 else a  # a vector (a linear layer) as one strip
        a = a[None] if a.dim() == 2 else a
        means = a.flatten(1).mean(1)
        order = torch.argsort(means, descending=True)[:max_channels]
        blocks.append((name, a, order))
        rows_table += [{"layer": name, "channel": int(c), "mean": float(means[c]), "max": float(a[c].max()),
                        "zero_fraction": float((a[c] == 0).float().mean()), "shape": "x".join(map(str, a.shape))}
                       for c in range(len(a))]
    cols = max(1, cols)
    rows = 1 + sum(math.ceil(len(order) / cols) for _, _, order in blocks)
    fig, axes = figures.grid(rows, cols, f"{run.stem}: feature maps of {figures.short(sample.name, 40)}")
    figures.show(axes[0, 0], view[0], "input (eval view)")
    r = 1
    for name, a, order in blocks:
        for k, c in enumerate(order.tolist()):
            rr, cc = divmod(k, cols)
            value = f" = {float(a[c].flatten()[0]):.3g}" if a[c].numel() == 1 else ""  # 1x1: say it
            title = (f"{name} {'x'.join(map(str, a.shape))}" if k == 0 else "") + f"\nch {c}{value}"
            figures.show_map(axes[r + rr, cc], a[c], title)
        r += math.ceil(len(order) / cols)
    return fig, pd.DataFrame(rows_table)
