"""ResNet: K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385): ResNet-18/34/50/101/152 with the bottleneck's stride on the 3x3
convolution ("v1.5", as torchvision), and the CIFAR-10 ResNet-20/32/44/56/110 of §4.2 (option A
shortcuts: identity with zero-padded channels). Pre-activation variant: K. He et al., "Identity
Mappings in Deep Residual Networks", ECCV 2016 (arXiv:1603.05027).

BatchNorm placement: 'before' is conv-BN-act (the paper), 'after' is conv-act-BN, 'none' drops
BatchNorm (convolutions get biases). The last convolution of a residual branch has no activation
of its own: its BatchNorm (if any) comes before the addition in every placement.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.layers import ch, check_options, check_size, conv_bn_act, init_weights, make_act
from toolkit.registry import TrainDefaults, register_recipe

# He et al. 2016 §3.4 + torchvision's reference: SGD 0.1 for batch 256 (8 GPUs x 32), momentum 0.9,
# weight decay 1e-4, lr / 10 every 30 epochs, 90 epochs; scale augmentation, 224 crops, flip.
IMAGENET = TrainDefaults(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=32,
                         epochs=90, lr_schedule="multistep", lr_step_epochs=(30, 60), lr_factor=0.1,
                         image_size=224, source="He et al. 2016 §3.4; torchvision references/classification")
# §4.2: batch 128, lr 0.1 / 10 at 32k and 48k iterations, stop at 64k (45k train images: epochs
# 91, 136, 182), weight decay 1e-4, momentum 0.9; 32x32 crops from 4-pixel padding, flip.
CIFAR = TrainDefaults(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128,
                      epochs=182, lr_schedule="multistep", lr_step_epochs=(91, 136), lr_factor=0.1,
                      image_size=32, eval_resize=32, source="He et al. 2016 §4.2")


def _tail(cin, cout, k, stride, bn):
    """The last convolution of a branch: conv (+ BN), activation applied after the addition."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=bn == "none")]
    return nn.Sequential(*layers, *([nn.BatchNorm2d(cout)] if bn != "none" else []))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, bn, act, shortcut="B"):
        super().__init__()
        cout = planes * self.expansion
        self.branch = nn.Sequential(conv_bn_act(cin, planes, 3, stride, bn=bn, act=act,
                                                bias=bn == "none"), _tail(planes, cout, 3, 1, bn))
        self.shortcut = _shortcut(cin, cout, stride, bn, shortcut)
        self.act = make_act(act, cout)

    def forward(self, x):
        return self.act(self.branch(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin, planes, stride, bn, act, shortcut="B"):
        nn.Module.__init__(self)
        cout = planes * self.expansion
        self.branch = nn.Sequential(
            conv_bn_act(cin, planes, 1, 1, bn=bn, act=act, bias=bn == "none"),
            conv_bn_act(planes, planes, 3, stride, bn=bn, act=act, bias=bn == "none"),  # v1.5
            _tail(planes, cout, 1, 1, bn))
        self.shortcut = _shortcut(cin, cout, stride, bn, shortcut)
        self.act = make_act(act, cout)


class PadShortcut(nn.Module):
    """Option A (§4.2): subsample by the stride, zero-pad the new channels; no parameters."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))


def _shortcut(cin, cout, stride, bn, kind):
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cin, cout, stride)
    return _tail(cin, cout, 1, stride, bn)  # option B: 1x1 projection


class PreActBlock(nn.Module):
    """He et al. 2016b: BN -> act -> conv, twice, on the branch; identity or projection shortcut."""
    expansion = 1

    def __init__(self, cin, planes, stride, bn, act, shortcut="B"):
        super().__init__()
        cout = planes * self.expansion
        self.pre = nn.Sequential(*([nn.BatchNorm2d(cin)] if bn != "none" else []), make_act(act, cin))
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=bn == "none")
        self.mid = nn.Sequential(*([nn.BatchNorm2d(planes)] if bn != "none" else []), make_act(act, planes))
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=bn == "none")
        self.proj = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = self.pre(x)
        short = x if self.proj is None else self.proj(out)
        return self.conv2(self.mid(self.conv1(out))) + short


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, image_size=224, act="relu", bn="before",
                 init="he_normal", bias_init=0.0, dropout=0.0, width=1.0, name="resnet",
                 cifar=False, preact=False):
        super().__init__()
        allowed = ("before", "none") if preact else ("before", "after", "none")
        check_options(name, act, bn, init, allowed)
        check_size(name, image_size, 32)
        widths = [16, 32, 64] if cifar else [64, 128, 256, 512]
        stem_out = ch(widths[0], width)
        if cifar:
            self.stem = conv_bn_act(3, stem_out, 3, 1, bn=bn, act=act, bias=bn == "none")
        else:
            self.stem = nn.Sequential(conv_bn_act(3, stem_out, 7, 2, bn=bn, act=act, bias=bn == "none"),
                                      nn.MaxPool2d(3, 2, 1))
        if preact:  # the stem's BN/act moves into the first block
            self.stem = nn.Conv2d(3, stem_out, 3 if cifar else 7, 1 if cifar else 2,
                                  1 if cifar else 3, bias=False)
            if not cifar:
                self.stem = nn.Sequential(self.stem, nn.MaxPool2d(3, 2, 1))
        stages, cin = [], stem_out
        for i, (w, n) in enumerate(zip(widths, layers)):
            planes = ch(w, width)
            for j in range(n):
                stages.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, bn, act,
                                    "A" if cifar else "B"))
                cin = planes * block.expansion
        if preact:
            stages += [nn.Sequential(*([nn.BatchNorm2d(cin)] if bn != "none" else []), make_act(act, cin))]
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, init, act, bias_init)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.layers(self.stem(x))), 1)))


def _register(name, block, layers, defaults, min_size, **fixed):
    @register_recipe(name, defaults=defaults, min_image_size=min_size)
    def build(**kw):
        return ResNet(block, layers, name=name, **{**fixed, **kw})
    return build


for _d, (_b, _l) in {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                     50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]),
                     152: (Bottleneck, [3, 8, 36, 3])}.items():
    _register(f"resnet{_d}", _b, _l, IMAGENET, 32)
    if _b is BasicBlock:
        _register(f"preact_resnet{_d}", PreActBlock, _l, IMAGENET, 32, preact=True)
for _d in (20, 32, 44, 56, 110):
    _register(f"resnet{_d}", BasicBlock, [(_d - 2) // 6] * 3, CIFAR, 16,
              cifar=True, num_classes=10, image_size=32)
