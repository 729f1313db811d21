"""torchvision's state_dict layout -> ours, per family.

Measured (tests/test_transfer.py): for ResNet-18/34/50/101/152, VGG-11/13/16/19 with and without
BatchNorm, SqueezeNet 1.0/1.1, and torchvision's AlexNet and GoogLeNet against our alexnet_owt and
googlenet_bn, torchvision's tensors and ours have the same shapes in the same order, under other
names: torchvision's flat `features` Sequentials hold conv, BN and ReLU as separate entries where
ours group them in one conv_bn_act Sequential, ResNet blocks are numbered per stage there and
across stages here, and so on. Each map below renames by the layout's rules (not by position), so
a file of another depth or width fails on a named tensor instead of loading into the wrong place.

A map takes the source's and our state dicts and returns {source key: our key}; keys it leaves
out are "ignored" by the loader.
"""
import fnmatch
import re
from typing import Callable, Dict, List, Optional

_BLOCK = {"conv1": "branch.0.0", "bn1": "branch.0.1", "conv2": "branch.1.0", "bn2": "branch.1.1",
          "conv3": "branch.2.0", "bn3": "branch.2.1", "downsample.0": "shortcut.0",
          "downsample.1": "shortcut.1"}


def _indices(keys, pattern: str) -> List[int]:
    return sorted({int(m[1]) for k in keys for m in [re.match(pattern, k)] if m})


def resnet(src: Dict, ours: Dict) -> Dict[str, str]:
    """conv1/bn1 -> stem.0.{0,1}; layerS.J -> layers.(blocks before stage S + J); fc -> fc."""
    per_stage = {s: len(_indices(src, rf"layer{s}\.(\d+)\.")) for s in range(1, 5)}
    out = {}
    for k in src:
        m = re.match(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(.+)$", k)
        if m:
            block = sum(per_stage[s] for s in range(1, int(m[1]))) + int(m[2])
            out[k] = f"layers.{block}.{_BLOCK[m[3]]}.{m[4]}"
        elif k.startswith(("conv1.", "bn1.")):
            out[k] = ("stem.0.0." if k.startswith("conv1.") else "stem.0.1.") + k.split(".", 1)[1]
        elif k.startswith("fc."):
            out[k] = k
    return out


def _flat_features(src: Dict, ours: Dict, ours_pattern: str, head: Dict[str, str]) -> Dict[str, str]:
    """torchvision's flat `features` (conv, [BN], ReLU, [pool] ...) onto our grouped blocks: the
    k-th convolution (and the BN after it) goes to our k-th conv_bn_act block."""
    tv_convs = [i for i in _indices(src, r"features\.(\d+)\.weight$") if f"features.{i}.running_mean" not in src]
    our_blocks = _indices(ours, ours_pattern)
    out = {}
    for tv_i, our_i in zip(tv_convs, our_blocks):
        for k in src:
            for tv_at, sub in ((tv_i, "0"), (tv_i + 1, "1")):  # the conv, the BN right after it
                m = re.match(rf"features\.{tv_at}\.(.+)$", k)
                if m and (sub == "0" or f"features.{tv_at}.running_mean" in src):
                    out[k] = f"features.{our_i}.{sub}.{m[1]}"
    out.update({k: head.get(k, k) for k in src if k.startswith("classifier.")})
    return out


def vgg(src: Dict, ours: Dict) -> Dict[str, str]:
    """features.I (conv) / features.I+1 (BN) -> features.K.0 / .1; classifier.* unchanged."""
    return _flat_features(src, ours, r"features\.(\d+)\.0\.weight$", {})


alexnet = vgg  # the same layout: torchvision's alexnet -> our alexnet_owt


def squeezenet(src: Dict, ours: Dict) -> Dict[str, str]:
    """features.0 -> features.0.0; Fire modules move down one place (torchvision's stem ReLU is an
    entry of its own there) with squeeze/expand1x1/expand3x3 -> squeeze.0/expand1.0/expand3.0."""
    names = {"squeeze": "squeeze", "expand1x1": "expand1", "expand3x3": "expand3"}
    out = {}
    for k in src:
        m = re.match(r"features\.(\d+)\.(squeeze|expand1x1|expand3x3)\.(.+)$", k)
        if m:
            out[k] = f"features.{int(m[1]) - 1}.{names[m[2]]}.0.{m[3]}"
        elif k.startswith("features.0."):
            out[k] = "features.0.0." + k.split(".", 2)[2]
        elif k.startswith("classifier."):
            out[k] = k
    return out


_GOOGLENET_BLOCKS = ["3a", "3b", None, "4a", "4b", "4c", "4d", "4e", None, "5a", "5b"]


def googlenet(src: Dict, ours: Dict) -> Dict[str, str]:
    """torchvision's GoogLeNet -> our googlenet_bn: conv1/2/3 -> stem.0/2/3, inceptionXY -> blocks.N,
    branchB -> bB, BasicConv2d's conv/bn -> 0/1, aux1/aux2 -> aux.0/aux.1.net, fc -> head.3."""
    def conv(path: str) -> str:  # BasicConv2d -> conv_bn_act
        return path.replace(".conv.", ".0.").replace(".bn.", ".1.")
    out = {}
    for k in src:
        m = re.match(r"conv([123])\.(.+)$", k)
        i = re.match(r"inception(\d[a-e])\.branch(\d)\.(.+)$", k)
        a = re.match(r"aux([12])\.(conv|fc1|fc2)\.(.+)$", k)
        if m:
            out[k] = conv(f"stem.{'023'[int(m[1]) - 1]}.{m[2]}")
        elif i:
            out[k] = conv(f"blocks.{_GOOGLENET_BLOCKS.index(i[1])}.b{i[2]}.{i[3]}")
        elif a:
            part = {"conv": "1", "fc1": "3", "fc2": "6"}[a[2]]
            out[k] = conv(f"aux.{int(a[1]) - 1}.net.{part}.{a[3]}")
        elif k.startswith("fc."):
            out[k] = "head.3." + k[3:]
    return out


# our recipe -> the map from torchvision's layout, and torchvision's builder of that layout
MAPS = [("resnet18", resnet), ("resnet34", resnet), ("resnet50", resnet), ("resnet101", resnet),
        ("resnet152", resnet), ("vgg*", vgg), ("squeezenet1_[01]", squeezenet),
        ("alexnet_owt", alexnet), ("googlenet_bn", googlenet)]
# torchvision's name -> our recipe, where they differ (the paper's alexnet/googlenet are ours)
TORCHVISION_HOME = {"alexnet": "alexnet_owt", "googlenet": "googlenet_bn"}


def torchvision_map(recipe: str) -> Optional[Callable]:
    for pattern, fn in MAPS:
        if fnmatch.fnmatch(recipe, pattern):
            return fn
    return None
