"""Which pixels matter: class activation maps and occlusion sensitivity, batched, as heatmaps over
the pixels the network was given (the eval view), and the share of the heat inside a known box.

CAM proper (Zhou et al. 2016) where the chosen layer feeds a global average pool and then the
classifier (checked on the forward pass itself: the classifier's input must be the layer's spatial
mean, or the logits themselves the spatial mean of a class map, as in SqueezeNet); Grad-CAM
(captum's LayerGradCam) elsewhere. Occlusion: captum's Occlusion on the class probability, patches
of the dataset's mean colour (0 after normalisation).
"""
import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import pandas as pd
from captum.attr import LayerGradCam, Occlusion

from toolkit.errors import UserError
from toolkit.visualize import figures
from toolkit.visualize.images import box_masks, eval_views


def _record_outputs(model: nn.Module, x: torch.Tensor):
    """[(name, module, output)] in the order modules finish, and the model's output."""
    done, hooks = [], []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: done.append((name, mod, o))))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return done, out


MIN_SIDE = 7  # the last block's map at 224 px (ResNet, VGG, GoogLeNet); at 64 px it is 2x2, which
# says next to nothing about where: the default layer is the last one whose map is at least this big


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last convolutional block whose map is at least MIN_SIDE x MIN_SIDE (else the last with the
    largest map): the last module to finish with such a spatial output; of modules returning that
    same tensor (a block and the stage holding it), the outermost."""
    done, _ = _record_outputs(model, x[:1])
    spatial, floor = [], None
    for n, _, o in done:  # a map larger than one before it is an upsampled copy (VGG's adaptive
        if torch.is_tensor(o) and o.dim() == 4:  # pool gives 7x7 from 1x1 at 32 px): not a finer map
            fine = floor is None or min(o.shape[-2:]) <= floor
            floor = min(o.shape[-2:]) if floor is None else min(floor, min(o.shape[-2:]))
            if fine and o.shape[-1] * o.shape[-2] > 1:
                spatial.append((n, o))
    if not spatial:
        raise UserError("no layer with a spatial output in this model; give one with --layer")
    side = min(MIN_SIDE, max(min(o.shape[-2:]) for _, o in spatial))
    last = [o for _, o in spatial if min(o.shape[-2:]) >= side][-1]
    return min((n for n, o in spatial if o is last), key=lambda n: n.count("."))


def cam_weights(model: nn.Module, layer: nn.Module, x: torch.Tensor):
    """How the logits come from the layer's spatial mean, when they do: ('linear', W) for
    logits = W @ mean(A) + b, ('identity', None) for logits = mean(A); None otherwise."""
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        hooks.append(linears[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("fc", (i[0], o))))
    try:
        with torch.no_grad():
            out = model(x[:2])
    finally:
        for h in hooks:
            h.remove()
    a = seen.get("a")
    if not torch.is_tensor(a) or a.dim() != 4:
        return None
    pooled = a.float().mean((2, 3))
    if "fc" in seen:
        fc_in, fc_out = seen["fc"]
        if fc_in.shape == pooled.shape and torch.allclose(fc_in.float(), pooled, atol=1e-4, rtol=1e-3) \
                and fc_out.shape == out.shape and torch.allclose(fc_out, out):
            return "linear", linears[-1].weight.detach()
    if pooled.shape == out.shape and torch.allclose(pooled, out.float(), atol=1e-4, rtol=1e-3):
        return "identity", None
    return None


@dataclasses.dataclass
class HeatResult:
    heat: torch.Tensor      # N x S x S, >= 0, on the CPU
    method: str             # "CAM", "Grad-CAM" or "occlusion"
    map_size: str = ""      # the layer's map, H x W (CAM, Grad-CAM)


def class_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor,
               method: str = "auto", batch_size: int = 32, name: str = "") -> HeatResult:
    """CAM (where it applies and method is auto or cam) or Grad-CAM of class `targets[i]` for each
    image, upsampled (bilinear) to the input size, negative parts dropped."""
    _check_feature_map(model, layer, x, name or type(layer).__name__)
    how = cam_weights(model, layer, x) if method in ("auto", "cam") else None
    if method == "cam" and how is None:
        raise UserError("--method cam: this layer does not feed a global average pool and the "
                        "classifier; use --method gradcam, or the default layer")
    size = x.shape[-2:]
    maps = []
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size], targets[i:i + batch_size].to(x.device)
        if how is None:
            m = LayerGradCam(model, layer).attribute(xb, target=tb, relu_attributions=True)
        else:
            m = _cam(model, layer, xb, tb, how)
        maps.append(F.interpolate(m.detach().float(), size=size, mode="bilinear", align_corners=False)
                    .clamp_(min=0)[:, 0].cpu())
    return HeatResult(torch.cat(maps), "Grad-CAM" if how is None else "CAM", "x".join(map(str, m.shape[-2:])))


def _check_feature_map(model, layer, x, name):
    seen = {}
    hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        hook.remove()
    a = seen.get("a")
    if not torch.is_tensor(a) or a.dim() != 4:
        what = "is not run in evaluation" if "a" not in seen else \
            f"gives {'x'.join(map(str, a.shape[1:])) if torch.is_tensor(a) else type(a).__name__}, not a feature map"
        raise UserError(f"--layer {name} {what}; choose a convolutional layer "
                        "(tools/visualize.py activations --list-layers)")


def _cam(model, layer, x, targets, how):
    seen = {}
    hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    a = seen["a"].float()
    if how[0] == "linear":
        w = how[1].float()[targets]                       # N x K
        return torch.einsum("nk,nkhw->nhw", w, a)[:, None]
    return a[torch.arange(len(a)), targets][:, None]


def occlusion(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, patch: int, stride: int,
              batch_size: int = 32) -> HeatResult:
    """How much the class probability drops when a patch x patch square of the mean colour covers
    each pixel (captum averages over the patches covering it); negative (rises) dropped."""
    if not 0 < patch <= x.shape[-1] or not 0 < stride:
        raise UserError(f"--patch {patch} / --stride {stride}: need 0 < patch <= image size "
                        f"{x.shape[-1]} and stride > 0")

    def probability(inp):
        return model(inp).float().softmax(1)

    occ = Occlusion(probability)
    per_eval = max(1, 256 // max(1, min(batch_size, len(x))))  # forward batches of ~256 images
    maps = []
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size], targets[i:i + batch_size].to(x.device)
        with torch.no_grad():
            a = occ.attribute(xb, target=tb, sliding_window_shapes=(x.shape[1], patch, patch),
                              strides=(x.shape[1], stride, stride), baselines=0.0,
                              perturbations_per_eval=per_eval)
        maps.append(a.float().mean(1).clamp_(min=0).cpu())
    return HeatResult(torch.cat(maps), "occlusion")


def heat_in_box(heat: torch.Tensor, masks: torch.Tensor):
    """(fraction of each map's heat inside its mask, the mask's share of the image), each N; NaN
    where a map has no heat."""
    total = heat.flatten(1).sum(1)
    inside = (heat * masks).flatten(1).sum(1)
    fraction = torch.where(total > 0, inside / total.clamp(min=1e-30), torch.full_like(total, float("nan")))
    return fraction, masks.float().flatten(1).mean(1)


def summary_line(name: str, fraction: torch.Tensor, share: torch.Tensor, correct: torch.Tensor) -> Optional[str]:
    """'heat inside the shape's box: mean ... against the box's share ...' over the images where
    `correct` (correctly classified, and explained for their true class)."""
    keep = correct & ~torch.isnan(fraction)
    if not keep.any():
        return None
    f, s = fraction[keep], share[keep]
    cold = int((correct & torch.isnan(fraction)).sum())
    return (f"{name} heat inside the shape's box: mean {f.mean():.3f} (median {f.median():.3f}) against "
            f"the box's share of the image {s.mean():.3f}; ratio {(f / s.clamp(min=1e-6)).mean():.2f}x "
            f"over {int(keep.sum())} correctly classified images"
            + (f" ({cold} more with no positive heat)" if cold else ""))


@dataclasses.dataclass
class HeatOptions:
    kind: str = "gradcam"            # gradcam | occlusion
    layer: Optional[str] = None      # gradcam: default the last convolutional block
    target: Optional[int] = None     # the class to explain; default the predicted one
    method: str = "auto"             # gradcam: auto (CAM where it applies) | cam | gradcam
    patch: Optional[int] = None      # occlusion: default image size / 8
    stride: Optional[int] = None     # occlusion: default patch / 2
    cols: int = 8
    batch_size: int = 32
    show: int = 32                   # images in the figure (the CSV has them all)


def explain(run, samples, opts: HeatOptions):
    """(figure, table, summary line or None): per image its eval view above the heatmap over it."""
    views = eval_views(run, samples)
    layer_name = None
    if opts.kind == "gradcam":
        layer_name = opts.layer or default_layer(run.model, run.normalize(views[:1]))
        layer = run.module(layer_name)
    probs = run.predict(views, opts.batch_size)
    predicted = probs.argmax(1)
    targets = predicted if opts.target is None else torch.full_like(predicted, opts.target)
    x = run.normalize(views)
    if opts.kind == "gradcam":
        result = class_maps(run.logits, layer, x, targets, opts.method, opts.batch_size, layer_name)
    else:
        patch = opts.patch or max(1, run.image_size // 8)
        result = occlusion(run.logits, x, targets, patch, opts.stride or max(1, patch // 2), opts.batch_size)
    masks = box_masks(run, samples)
    table = _table(run, samples, probs, targets, result, layer_name, masks)
    fig = _figure(run, samples, views, result, table, opts, layer_name, masks)
    line = None
    if masks is not None:
        labels = torch.tensor([-1 if s.label is None else s.label for s in samples])
        line = summary_line(result.method, torch.tensor(table["heat_in_box"].to_numpy()),
                            torch.tensor(table["box_share"].to_numpy()), (predicted == labels) & (targets == labels))
    return fig, table, line


def _table(run, samples, probs, targets, result, layer_name, masks):
    predicted = probs.argmax(1)
    rows = {"image": [s.name for s in samples],
            "true": [run.class_name(s.label) for s in samples],
            "predicted": [run.class_name(int(p)) for p in predicted],
            "probability": probs.max(1).values.numpy(),
            "target": [run.class_name(int(t)) for t in targets],
            "target_probability": probs[torch.arange(len(probs)), targets].numpy(),
            "method": result.method, "layer": layer_name or ""}
    if masks is not None:
        fraction, share = heat_in_box(result.heat, masks)
        rows.update(heat_in_box=fraction.numpy(), box_share=share.numpy())
    return pd.DataFrame(rows)


def _figure(run, samples, views, result, table, opts, layer_name, masks):
    samples = samples[:opts.show]
    rows, cols = figures.layout(len(samples), opts.cols)
    what = f"{result.method} at {layer_name} ({result.map_size} map)" if layer_name else \
        f"occlusion, {opts.patch or max(1, run.image_size // 8)} px patches"
    # --class C: every map on one scale (the largest map's maximum), so a class an image barely shows
    # does not look as hot as one it shows; the predicted class's maps: each to its own maximum
    target = "predicted class, each map to its own maximum" if opts.target is None else \
        f"class {run.class_name(opts.target)} (its probability), all maps on one scale"
    vmax = float(result.heat.max()) if opts.target is not None and len(result.heat) else None
    boxes = "; white: the shape's box" if masks is not None else ""
    fig, axes = figures.grid(2 * rows, cols, f"{run.stem}: {what}, for the {target} (red: a mistake){boxes}")
    for k, (s, row) in enumerate(zip(samples, table.itertuples())):
        r, c = divmod(k, cols)
        figures.show(axes[2 * r, c], views[k], f"{figures.short(s.name)}\ntrue {row.true}")
        inside = f" in box {row.heat_in_box:.2f}" if "heat_in_box" in table else ""
        color = "black" if s.label is None or row.true == row.predicted else "red"
        explained = f"{row.target} {row.target_probability:.2f}" if opts.target is not None else row.target
        figures.show_heat(axes[2 * r + 1, c], views[k], result.heat[k],
                          f"{row.predicted} {row.probability:.2f}\n{explained}{inside}", vmax=vmax)
        axes[2 * r + 1, c].title.set_color(color)
        if masks is not None:
            figures.outline(axes[2 * r + 1, c], masks[k])
    return fig
