"""What a filter responds to: the first convolution's kernels as images, and activation
maximization: gradient ascent on the input for a channel of a layer or a class's logit, with the
usual regularisation (Yosinski et al. 2015, Olah et al. 2017): random jitter (shifts) each step, a
Gaussian blur every few steps, and decay of the image towards the mean colour.

Hand-written: the one dedicated maintained-looking library (lucent, the PyTorch port of lucid) has
been unmaintained since 2021 and pins old torch versions, and captum has no input-optimisation
method; the loop is short, and here it runs batched (one image per target) on any recipe.
"""
import dataclasses
import math
from typing import List, Optional

import pandas as pd
import torch
import torch.nn as nn
import torchvision.transforms.v2.functional as TF

from toolkit.errors import UserError
from toolkit.visualize import figures


def first_conv(model: nn.Module):
    """(name, module) of the first Conv2d (in definition order, which is the forward order of
    every recipe's stem)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise UserError("this model has no Conv2d layer to show kernels of")


def kernel_images(conv: nn.Conv2d) -> torch.Tensor:
    """uint8 O x 3 x k x k (RGB kernels; others: the first input channel, grey), one scale for all
    so that their strengths compare: 0 is mid-grey."""
    w = conv.weight.detach().float().cpu()
    w = w if w.shape[1] == 3 else w[:, :1].expand(-1, 3, -1, -1)
    scale = w.abs().max().clamp(min=1e-12)
    return (w / scale * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclasses.dataclass
class Ascent:
    steps: int = 128
    lr: float = 0.05
    jitter: int = 4          # pixels of random shift each step
    blur_every: int = 4      # steps between blurs
    blur_sigma: float = 0.5
    decay: float = 0.01      # the image shrinks by this factor each step (towards the mean colour)
    seed: int = 0
    init_std: float = 1.0    # starting noise (normalised units): enough for units behind a ReLU to fire


def maximize(run, layer: Optional[str], targets: List[int], opts: Ascent):
    """(uint8 T x 3 x S x S images, objective before, objective after): image t maximises channel
    targets[t] of `layer` (its mean over space), or the logit of class targets[t] without a layer."""
    model = run.logits
    module = run.module(layer) if layer else None
    seen = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o)) if module is not None else None
    idx = torch.tensor(targets, device=run.device)

    def objective(x):
        out = model(x)
        a = seen["a"] if module is not None else out
        a = a.float()
        picked = a[torch.arange(len(a)), idx]
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked

    g = torch.Generator().manual_seed(opts.seed)
    size = run.image_size
    x = (torch.randn(len(targets), 3, size, size, generator=g) * opts.init_std).to(run.device).requires_grad_(True)
    low, high = run.valid_range()
    optimizer = torch.optim.Adam([x], lr=opts.lr)
    params = [p.requires_grad for p in run.model.parameters()]
    for p in run.model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            before = objective(x).cpu()
        for step in range(opts.steps):
            dy, dx = (int(v) for v in torch.randint(-opts.jitter, opts.jitter + 1, (2,), generator=g))
            loss = -objective(torch.roll(x, (dy, dx), (2, 3))).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.mul_(1 - opts.decay)
                if opts.blur_every and (step + 1) % opts.blur_every == 0 and opts.blur_sigma > 0:
                    k = 2 * math.ceil(2 * opts.blur_sigma) + 1
                    x.copy_(TF.gaussian_blur(x, [k, k], [opts.blur_sigma, opts.blur_sigma]))
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        with torch.no_grad():
            after = objective(x).cpu()
    finally:
        if hook is not None:
            hook.remove()
        for p, r in zip(run.model.parameters(), params):
            p.requires_grad_(r)
    return run.unnormalize(x), before, after


def filters(run, layer: Optional[str], targets: List[int], opts: Ascent, cols: int = 8, max_kernels: int = 64):
    """(figure, table): the first convolution's kernels, then one maximising image per target."""
    name, conv = first_conv(run.model)
    kernels = kernel_images(conv)[:max_kernels]
    images, before, after = maximize(run, layer, targets, opts) if targets else (None, [], [])
    cols = max(1, cols)
    rows_k, rows_t = math.ceil(len(kernels) / cols), math.ceil(len(targets) / cols)
    what = f"{layer} channel" if layer else "class"
    fig, axes = figures.grid(rows_k + rows_t, cols,
                             f"{run.stem}: {name} kernels ({'x'.join(map(str, conv.weight.shape))}), then "
                             f"images maximising each {what} ({opts.steps} steps)")
    for k, kern in enumerate(kernels):
        r, c = divmod(k, cols)
        figures.show(axes[r, c], kern, f"{name}[{k}]")
    label = (lambda t: f"ch {t}") if layer else run.class_name
    for k, t in enumerate(targets):
        r, c = divmod(k, cols)
        figures.show(axes[rows_k + r, c], images[k], f"{label(t)}\n{float(before[k]):.2f} -> {float(after[k]):.2f}")
    table = pd.DataFrame({"layer": layer or "logits", "target": [label(t) for t in targets],
                          "index": targets, "objective_before": [float(v) for v in before],
                          "objective_after": [float(v) for v in after]})
    return fig, table
