"""Building blocks shared by the recipes: activations, conv + BatchNorm + activation in either order,
channel widths, and initialisation whose gain matches the activation.

Gain: for ReLU-family activations torch's own `calculate_gain` (sqrt(2), sqrt(2/(1+a^2)) with a the
leaky or PReLU slope), 5/3 for tanh; for ELU and SiLU, which have no standard gain, the He argument
generalised: gain = 1/sqrt(E[f(z)^2]) for z ~ N(0, 1), which keeps the second moment of the
activations constant through depth (the formula gives exactly sqrt(2) for ReLU).
"""
import math
from typing import Optional

import numpy as np
import torch.nn as nn

from toolkit.cli import ACTIVATIONS, BN_PLACEMENTS, INITIALIZERS
from toolkit.errors import UserError

LEAKY_SLOPE = 0.01
PRELU_INIT = 0.25


def check_options(recipe: str, act: str, bn: str, init: str, allowed_bn=BN_PLACEMENTS):
    if act not in ACTIVATIONS:
        raise UserError(f"{recipe}: unknown activation {act!r}; valid: {', '.join(ACTIVATIONS)}")
    if init not in INITIALIZERS:
        raise UserError(f"{recipe}: unknown initializer {init!r}; valid: {', '.join(INITIALIZERS)}")
    if bn not in allowed_bn:
        raise UserError(f"{recipe}: --bn {bn} is not possible for this network; valid: {', '.join(allowed_bn)}")


def check_size(recipe: str, image_size: int, minimum: int):
    if image_size < minimum:
        raise UserError(f"{recipe}: --image-size {image_size} is too small; this network needs at "
                        f"least {minimum}")


def make_act(act: str, channels: int = 1) -> nn.Module:
    if act == "prelu":
        return nn.PReLU(channels, init=PRELU_INIT)  # channel-wise, as in He et al. 2015
    return {"relu": lambda: nn.ReLU(inplace=True), "elu": lambda: nn.ELU(inplace=True),
            "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            "silu": lambda: nn.SiLU(inplace=True), "tanh": nn.Tanh}[act]()


def _second_moment(f) -> float:
    z = np.linspace(-12, 12, 200001)
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return float(np.trapezoid(f(z) ** 2 * pdf, z))


def gain(act: str) -> float:
    if act == "relu":
        return math.sqrt(2.0)
    if act in ("leaky_relu", "prelu"):
        a = LEAKY_SLOPE if act == "leaky_relu" else PRELU_INIT
        return nn.init.calculate_gain("leaky_relu", a)
    if act == "tanh":
        return nn.init.calculate_gain("tanh")
    if act == "elu":
        return 1 / math.sqrt(_second_moment(lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0)))))
    if act == "silu":
        return 1 / math.sqrt(_second_moment(lambda z: z / (1 + np.exp(-z))))
    return 1.0


def init_std(init: str, act_gain: float, fan_in: int, fan_out: int) -> float:
    """Theoretical standard deviation of the weights (a uniform U(-b, b) has std b/sqrt(3))."""
    if init.startswith("he"):
        return act_gain / math.sqrt(fan_in)
    if init.startswith("xavier"):
        return act_gain * math.sqrt(2.0 / (fan_in + fan_out))
    return 1 / math.sqrt(fan_in)  # LeCun: fan-in rule with unit gain, by definition


def init_weights(model: nn.Module, init: str, act: str, bias_init: float = 0.0):
    """Initialise every conv/linear layer; the last layer (the classifier) gets unit gain."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    g = gain(act)
    for i, m in enumerate(layers):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        std = init_std(init, 1.0 if i == len(layers) - 1 else g, fan_in, fan_out)
        if init.endswith("uniform"):
            nn.init.uniform_(m.weight, -std * math.sqrt(3), std * math.sqrt(3))
        else:
            nn.init.normal_(m.weight, 0, std)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias_init)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def ch(c: int, width: float) -> int:
    """Channels scaled by the width multiplier (at least 1)."""
    return max(1, int(round(c * width)))


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, padding: Optional[int] = None,
                bn: str = "before", act: Optional[str] = "relu", bias: Optional[bool] = None) -> nn.Sequential:
    """conv -> BN -> act (bn='before'), conv -> act -> BN ('after'), conv -> act ('none').

    `bias=None` means: a bias only when no BatchNorm follows the convolution directly.
    """
    padding = k // 2 if padding is None else padding
    use_bias = (bn != "before") if bias is None else bias
    layers = [nn.Conv2d(cin, cout, k, stride, padding, bias=use_bias)]
    post = [make_act(act, cout)] if act else []
    norm = [nn.BatchNorm2d(cout)] if bn != "none" else []
    layers += norm + post if bn == "before" else post + norm
    return nn.Sequential(*layers)
