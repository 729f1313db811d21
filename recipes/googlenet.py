"""GoogLeNet: C. Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (arXiv:1409.4842).
Inception v1 as in Table 1, with the real 5x5 convolution in the third branch (torchvision uses a
3x3 there), LRN after the stem as in the paper when bn='none', and the optional auxiliary heads of
§5 (`aux_logits=True`: in training mode the model returns (main, aux1, aux2) and exposes
`aux_weight` = 0.3, the paper's discount).

googlenet_bn: the network torchvision's `googlenet` weights are for (their doc: "ported from the
original paper"): BatchNorm (eps 1e-3) after every convolution, a 3x3 convolution in the third
branch, a 2x2/2 max-pool after 4e, dropout 0.2 before the classifier, the auxiliary heads on
(13.0M parameters with them, 6.6M without) and `transform_input` (the input, normalised with
ImageNet's mean/std, re-normalised to the (x - 0.5) / 0.5 the ported weights expect). Training
defaults: the paper's schedule, as googlenet.

MiniGoogLeNet: the small Inception network for 32x32 images of C. Zhang et al., "Understanding deep
learning requires rethinking generalization", ICLR 2017 (arXiv:1611.03530), Appendix A / Fig. 3.
"""
import torch
import torch.nn as nn

from toolkit.layers import ch, check_options, check_size, conv_bn_act, init_weights, make_act
from toolkit.registry import TrainDefaults, register_recipe

# §6: asynchronous SGD, momentum 0.9, lr decreased by 4% every 8 epochs; the lr itself is not
# given: 0.01 is the common re-implementation choice (Caffe's bvlc_googlenet quick_solver uses poly).
GOOGLENET = TrainDefaults(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=2e-4, batch_size=32,
                          epochs=120, lr_schedule="step", lr_step_epochs=(8,), lr_factor=0.96,
                          image_size=224, source="Szegedy et al. 2015 §6; Caffe bvlc_googlenet (wd 2e-4)")
# Zhang et al. 2017 App. A: SGD momentum 0.9, lr 0.1 (x0.95 per epoch); we use the same lr with
# a poly decay over 70 epochs, as common CIFAR-10 practice; weight decay 5e-4.
MINI = TrainDefaults(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=64,
                     epochs=70, lr_schedule="poly", lr_step_epochs=(), image_size=32, eval_resize=32,
                     source="Zhang et al. 2017, App. A")


IMAGENET_MEAN_01 = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD_01 = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp, bn, act, k5=5):
        super().__init__()
        cba = lambda i, o, k: conv_bn_act(i, o, k, bn=bn, act=act)  # noqa: E731
        self.b1 = cba(cin, c1, 1)
        self.b2 = nn.Sequential(cba(cin, c3r, 1), cba(c3r, c3, 3))
        self.b3 = nn.Sequential(cba(cin, c5r, 1), cba(c5r, c5, k5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cba(cin, pp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class AuxHead(nn.Module):
    """§5: 5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 0.7, linear classifier."""

    def __init__(self, cin, num_classes, bn, act, width):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), conv_bn_act(cin, ch(128, width), 1, bn=bn, act=act),
                                 nn.Flatten(), nn.Linear(ch(128, width) * 16, ch(1024, width)),
                                 make_act(act, ch(1024, width)), nn.Dropout(0.7),
                                 nn.Linear(ch(1024, width), num_classes))

    def forward(self, x):
        return self.net(x)


# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; "M" a 3x3/2 max-pool
TABLE1 = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
          (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
          (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
          (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]


class GoogLeNet(nn.Module):
    aux_weight = 0.3

    def __init__(self, num_classes=1000, image_size=224, act="relu", bn="none", init="xavier_uniform",
                 bias_init=0.0, dropout=0.4, width=1.0, aux_logits=False, name="googlenet",
                 k5=5, pool4=3, bn_eps=1e-5, transform_input=False):
        super().__init__()
        self.transform_input = transform_input
        check_options(name, act, bn, init)
        check_size(name, image_size, 64)
        lrn = [nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)] if bn == "none" else []
        self.stem = nn.Sequential(
            conv_bn_act(3, ch(64, width), 7, 2, bn=bn, act=act), nn.MaxPool2d(3, 2, ceil_mode=True), *lrn,
            conv_bn_act(ch(64, width), ch(64, width), 1, bn=bn, act=act),
            conv_bn_act(ch(64, width), ch(192, width), 3, bn=bn, act=act), *lrn,
            nn.MaxPool2d(3, 2, ceil_mode=True))
        blocks, cin, self.aux_at = [], ch(192, width), {}
        for spec in TABLE1:
            if spec == "M":
                after_4e = any(isinstance(b, nn.MaxPool2d) for b in blocks)  # the second "M"
                blocks.append(nn.MaxPool2d(pool4 if after_4e else 3, 2, ceil_mode=True))
                continue
            c = [ch(v, width) for v in spec]
            blocks.append(Inception(cin, *c, bn=bn, act=act, k5=k5))
            cin = c[0] + c[2] + c[4] + c[5]
            if aux_logits and spec in (TABLE1[3], TABLE1[6]):  # after 4a and 4d
                self.aux_at[len(blocks) - 1] = len(self.aux_at)
        self.blocks = nn.Sequential(*blocks)
        self.aux = nn.ModuleList(AuxHead(c_in, num_classes, bn, act, width) for c_in in
                                 ([ch(512, width), ch(528, width)] if aux_logits else []))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, num_classes))
        init_weights(self, init, act, bias_init)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = bn_eps

    def forward(self, x):
        if self.transform_input:  # ImageNet-normalised -> (x - 0.5) / 0.5, as torchvision's
            x = x * IMAGENET_STD_01.to(x) / 0.5 + (IMAGENET_MEAN_01.to(x) - 0.5) / 0.5
        x, aux = self.stem(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.training and i in self.aux_at:
                aux.append(self.aux[self.aux_at[i]](x))
        out = self.head(x)
        return (out, *aux) if aux else out


class MiniGoogLeNet(nn.Module):
    def __init__(self, num_classes=10, image_size=32, act="relu", bn="before", init="he_normal",
                 bias_init=0.0, dropout=0.5, width=1.0, name="minigooglenet"):
        super().__init__()
        check_options(name, act, bn, init)
        check_size(name, image_size, 16)
        w = lambda c: ch(c, width)  # noqa: E731
        cba = lambda i, o, k, s=1: conv_bn_act(i, o, k, s, bn=bn, act=act)  # noqa: E731
        layers, cin = [cba(3, w(96), 3)], w(96)
        for spec in [(32, 32), (32, 48), "D80", (112, 48), (96, 64), (80, 80), (48, 96), "D96",
                     (176, 160), (176, 160)]:
            if isinstance(spec, str):  # downsample: 3x3/2 conv beside a 3x3/2 max-pool
                c = w(int(spec[1:]))
                layers.append(_Concat(cba(cin, c, 3, 2), nn.MaxPool2d(3, 2, 1)))
                cin += c
            else:
                layers.append(_Concat(cba(cin, w(spec[0]), 1), cba(cin, w(spec[1]), 3)))
                cin = w(spec[0]) + w(spec[1])
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, num_classes))
        init_weights(self, init, act, bias_init)

    def forward(self, x):
        return self.head(self.features(x))


class _Concat(nn.Module):
    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


register_recipe("googlenet", defaults=GOOGLENET, min_image_size=64)(lambda **kw: GoogLeNet(**kw))
register_recipe("googlenet_bn", defaults=GOOGLENET, min_image_size=64)(
    lambda **kw: GoogLeNet(**{"name": "googlenet_bn", "bn": "before", "dropout": 0.2, "aux_logits": True,
                              "init": "he_normal", "k5": 3, "pool4": 2, "bn_eps": 1e-3,
                              "transform_input": True, **kw}))
register_recipe("minigooglenet", defaults=MINI, min_image_size=16)(lambda **kw: MiniGoogLeNet(**kw))
