"""MXNet's image-classification operators as PyTorch modules, one module per graph node.

Each maker takes the node's MXNet attributes (strings, as in the symbol JSON) and the shapes of its
weights and returns an nn.Module whose forward takes the node's data inputs. Defaults are MXNet's
operator defaults (not PyTorch's): BatchNorm eps 1e-3 and fix_gamma True, LeakyReLU slope 0.25,
Pooling's 'valid' convention and count_include_pad True, FullyConnected's flatten True.
"""
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.mxnet_import.attrs import tup, value  # noqa: F401 (convert.py reads value here)
from toolkit.mxnet_import.pooling import Pool

# the weights each operator takes, in its input order after the data: MXNet name -> PyTorch name
WEIGHTS = {"Convolution": [("weight", "weight"), ("bias", "bias")],
           "FullyConnected": [("weight", "weight"), ("bias", "bias")],
           "BatchNorm": [("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                         ("moving_var", "running_var")],
           "LeakyReLU": [("gamma", "weight")]}
HEADS = {"SoftmaxOutput", "SoftmaxActivation", "softmax", "log_softmax", "Softmax", "LogisticRegressionOutput",
         "LinearRegressionOutput", "MAERegressionOutput", "SVMOutput"}


def weight_names(op: str, attrs: Dict[str, str]) -> List[str]:
    """The MXNet names of the weight inputs this node takes (after its data input)."""
    names = [m for m, _ in WEIGHTS.get(op, [])]
    if op in ("Convolution", "FullyConnected") and value(attrs, "no_bias", False):
        names = names[:1]
    if op == "LeakyReLU" and value(attrs, "act_type", "leaky") != "prelu":
        names = []
    return names


class Conv(nn.Conv2d):
    def __init__(self, attrs, shapes):
        w = shapes["weight"]
        if len(w) != 4:
            raise ValueError(f"only 2-D convolutions are taken (kernel {value(attrs, 'kernel')})")
        groups = int(value(attrs, "num_group", 1))
        super().__init__(w[1] * groups, w[0], tuple(w[2:]), tup(attrs, "stride", 1), tup(attrs, "pad", 0),
                         tup(attrs, "dilate", 1), groups, bias="bias" in shapes)


class BatchNorm(nn.BatchNorm2d):
    """MXNet's BatchNorm: eps and momentum as stored; fix_gamma ignores gamma (uses 1, also in
    training); use_global_stats uses the moving statistics in training too."""

    def __init__(self, attrs, shapes):
        super().__init__(shapes["weight"][0], eps=float(value(attrs, "eps", 1e-3)),
                         momentum=1.0 - float(value(attrs, "momentum", 0.9)))
        self.fix_gamma = bool(value(attrs, "fix_gamma", True))
        self.use_global_stats = bool(value(attrs, "use_global_stats", False))
        if self.fix_gamma:  # a buffer, not a parameter: nothing learns it, DDP finds no unused parameter
            del self.weight
            self.register_buffer("weight", torch.ones(shapes["weight"][0]))
        if int(value(attrs, "axis", 1)) != 1:
            raise ValueError("BatchNorm over an axis other than 1 (channels) is not taken")

    def forward(self, x):
        weight = torch.ones_like(self.weight) if self.fix_gamma else self.weight
        batch_stats = self.training and not self.use_global_stats
        return F.batch_norm(x, self.running_mean, self.running_var, weight, self.bias, batch_stats,
                            self.momentum, self.eps)


class Linear(nn.Linear):
    def __init__(self, attrs, shapes):
        w = shapes["weight"]
        super().__init__(w[1], w[0], bias="bias" in shapes)
        self.flatten = bool(value(attrs, "flatten", True))

    def forward(self, x):
        return super().forward(x.flatten(1) if self.flatten else x)


class PReLU(nn.Module):
    def __init__(self, attrs, shapes):
        super().__init__()
        self.weight = nn.Parameter(torch.full(tuple(shapes["weight"]), 0.25))

    def forward(self, x):
        w = self.weight.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 and self.weight.numel() > 1 \
            else self.weight
        return torch.where(x >= 0, x, x * w)


class Constant(nn.Module):
    """A variable of the graph fed to an operator as data (its value from the .params file)."""

    def __init__(self, attrs, shapes):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(tuple(shapes["value"])))

    def forward(self):
        return self.value


class Fn(nn.Module):
    """A node without weights: a function of its inputs (its name shows in layer lists and hooks)."""

    def __init__(self, fn: Callable, text: str):
        super().__init__()
        self.fn, self.text = fn, text

    def forward(self, *xs):
        return self.fn(*xs)

    def extra_repr(self):
        return self.text


class Dropout(nn.Module):
    def __init__(self, attrs, shapes):
        super().__init__()
        self.p = float(value(attrs, "p", 0.5))
        self.always = value(attrs, "mode", "training") == "always"

    def forward(self, x):
        return F.dropout(x, self.p, self.training or self.always) if self.p > 0 else x


ACTIVATIONS = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softrelu": F.softplus,
               "softsign": F.softsign}


def activation(attrs, shapes):
    kind = value(attrs, "act_type")
    if kind not in ACTIVATIONS:
        raise ValueError(f"Activation act_type {kind} is not taken (only {', '.join(ACTIVATIONS)})")
    return Fn(ACTIVATIONS[kind], kind)


def leaky_relu(attrs, shapes):
    kind = value(attrs, "act_type", "leaky")
    slope = float(value(attrs, "slope", 0.25))
    if kind == "prelu":
        return PReLU(attrs, shapes)
    if kind == "rrelu":  # at inference MXNet uses the mean of the random slope's range
        slope = (float(value(attrs, "lower_bound", 0.125)) + float(value(attrs, "upper_bound", 0.334))) / 2
        kind = "leaky"
    fns = {"leaky": lambda x: F.leaky_relu(x, slope), "elu": lambda x: F.elu(x, slope), "selu": F.selu,
           "gelu": F.gelu}
    if kind not in fns:
        raise ValueError(f"LeakyReLU act_type {kind} is not taken")
    return Fn(fns[kind], f"{kind} slope={slope}")


def _flatten(attrs, shapes):
    return Fn(lambda x: x.flatten(1), "flatten")


def _concat(attrs, shapes):
    dim = int(value(attrs, "dim", 1))
    return Fn(lambda *xs: torch.cat(xs, dim), f"dim={dim}")


def _lrn(attrs, shapes):  # x / (knorm + alpha / nsize * sum of squares)^beta, as PyTorch's
    return nn.LocalResponseNorm(int(value(attrs, "nsize")), float(value(attrs, "alpha", 1e-4)),
                                float(value(attrs, "beta", 0.75)), float(value(attrs, "knorm", 2.0)))


def _clip(attrs, shapes):
    lo, hi = float(value(attrs, "a_min")), float(value(attrs, "a_max"))
    return Fn(lambda x: x.clamp(lo, hi), f"[{lo}, {hi}]")


def reshape_target(dims, shape, reverse=False):
    """MXNet's Reshape shape codes (src/operator/tensor/matrix_op-inl.h, InferReshapeShape) on an input of
    `dims`: 0 copies a dimension, -1 is inferred, -2 copies all the rest, -3 merges two, -4 splits one into
    the next two codes (one of them may be -1); reverse=True reads both right to left."""
    dims, shape = list(dims), list(shape)
    if reverse:
        dims, shape = dims[::-1], shape[::-1]
    out, i, k = [], 0, 0
    while k < len(shape):
        s = shape[k]
        if s == -2:
            out.extend(dims[i:])
            i = len(dims)
        elif s == -3:
            out.append(dims[i] * dims[i + 1])
            i += 2
        elif s == -4:
            a, b = shape[k + 1], shape[k + 2]
            a = dims[i] // b if a == -1 else a
            b = dims[i] // a if b == -1 else b
            out.extend([a, b])
            i, k = i + 1, k + 2
        else:
            out.append(dims[i] if s == 0 else s)
            i += 1
        k += 1
    return out[::-1] if reverse else out


def _reshape(attrs, shapes):
    shape = tuple(value(attrs, "shape", ()))
    reverse = bool(value(attrs, "reverse", False))
    if not shape:
        raise ValueError("Reshape without a shape (the legacy target_shape) is not taken")
    return Fn(lambda x: x.reshape(reshape_target(x.shape, shape, reverse)), f"shape={shape} reverse={reverse}")


def _scalar(fn):
    def make(attrs, shapes):
        s = float(value(attrs, "scalar"))
        return Fn(lambda x: fn(x, s), f"scalar={s}")
    return make


def _fixed(fn, text):
    return lambda attrs, shapes: Fn(fn, text)


def _sum(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


SCALARS = {"_plus_scalar": torch.add, "_PlusScalar": torch.add, "_minus_scalar": torch.sub,
           "_MinusScalar": torch.sub, "_rminus_scalar": lambda x, s: s - x, "_RMinusScalar": lambda x, s: s - x,
           "_mul_scalar": torch.mul, "_MulScalar": torch.mul, "_div_scalar": torch.div, "_DivScalar": torch.div,
           "_rdiv_scalar": lambda x, s: s / x, "_RDivScalar": lambda x, s: s / x, "_power_scalar": torch.pow,
           "_PowerScalar": torch.pow, "_maximum_scalar": torch.clamp_min, "_minimum_scalar": torch.clamp_max}
BINARY = {"add": (torch.add, ("elemwise_add", "_plus", "_Plus", "_add", "broadcast_add", "broadcast_plus")),
          "sub": (torch.sub, ("elemwise_sub", "_minus", "_Minus", "_sub", "broadcast_sub", "broadcast_minus")),
          "mul": (torch.mul, ("elemwise_mul", "_mul", "_Mul", "broadcast_mul")),
          "div": (torch.div, ("elemwise_div", "_div", "_Div", "broadcast_div"))}

MAKERS: Dict[str, Callable] = {
    "Convolution": Conv, "BatchNorm": BatchNorm, "FullyConnected": Linear, "Activation": activation,
    "LeakyReLU": leaky_relu, "Flatten": _flatten, "flatten": _flatten, "Concat": _concat,
    "concat": _concat, "Dropout": Dropout, "LRN": _lrn, "Reshape": _reshape, "reshape": _reshape,
    "clip": _clip, "_constant": Constant, "relu": _fixed(F.relu, "relu"), "sigmoid": _fixed(torch.sigmoid, "sigmoid"),
    "tanh": _fixed(torch.tanh, "tanh"), "abs": _fixed(torch.abs, "abs"), "exp": _fixed(torch.exp, "exp"),
    "log": _fixed(torch.log, "log"), "sqrt": _fixed(torch.sqrt, "sqrt"), "square": _fixed(torch.square, "square"),
    "negative": _fixed(torch.neg, "negative"), "_maximum": _fixed(torch.maximum, "maximum"),
    "_minimum": _fixed(torch.minimum, "minimum"), "add_n": _fixed(_sum, "sum"), "ElementWiseSum": _fixed(_sum, "sum"),
    "identity": _fixed(lambda x: x, "identity"), "_copy": _fixed(lambda x: x, "identity"),
    "BlockGrad": _fixed(lambda x: x, "identity"), "stop_gradient": _fixed(lambda x: x, "identity"),
    **{op: _scalar(fn) for op, fn in SCALARS.items()},
    **{op: _fixed(fn, text) for text, (fn, ops) in BINARY.items() for op in ops},
}


def make_module(op: str, attrs: Dict[str, str], shapes: Dict[str, tuple]) -> nn.Module:
    if op in ("Pooling", "Pooling_v1"):
        return Pool(attrs)
    module = MAKERS[op](attrs, shapes)
    if type(module) is Fn:  # named after its operator in layer lists (tools/extract_features.py --list-layers)
        module.__class__ = _FN_TYPES.setdefault(op, type(op.strip("_") or op, (Fn,), {"__module__": __name__}))
    return module


_FN_TYPES: Dict[str, type] = {}


def supported(op: str) -> bool:
    return op in MAKERS or op in ("Pooling", "Pooling_v1") or op in HEADS

