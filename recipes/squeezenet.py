"""SqueezeNet: F. N. Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters
and <0.5MB model size", arXiv:1602.07360 (2016). v1.0 as in the paper (Table 1); v1.1 from the
authors' repository (3x3/64 first convolution, earlier pooling: 2.4x less computation).
No BatchNorm in the paper ('none'); 'before'/'after' add it to every convolution.
"""
import torch
import torch.nn as nn

from toolkit.layers import ch, check_options, check_size, conv_bn_act, init_weights
from toolkit.registry import TrainDefaults, register_recipe

# The authors' solver.prototxt (github.com/forresti/SqueezeNet): base_lr 0.04, poly (power 1),
# momentum 0.9, weight decay 2e-4, batch 512, 170k iterations (about 68 epochs).
DEFAULTS = TrainDefaults(optimizer="sgd", lr=0.04, momentum=0.9, weight_decay=2e-4, batch_size=64,
                         epochs=68, lr_schedule="poly", lr_step_epochs=(), image_size=224,
                         source="Iandola et al. 2016; SqueezeNet v1.0/v1.1 solver.prototxt (batch 512 = 8 x 64)")


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3, bn, act):
        super().__init__()
        self.squeeze = conv_bn_act(cin, squeeze, 1, bn=bn, act=act, bias=True)
        self.expand1 = conv_bn_act(squeeze, e1, 1, bn=bn, act=act, bias=True)
        self.expand3 = conv_bn_act(squeeze, e3, 3, bn=bn, act=act, bias=True)

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)


# (squeeze, expand) per fire module, "M" a 3x3/2 max-pool
V10 = [(16, 64), (16, 64), (32, 128), "M", (32, 128), (48, 192), (48, 192), (64, 256), "M", (64, 256)]
V11 = [(16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256)]


class SqueezeNet(nn.Module):
    def __init__(self, version, num_classes=1000, image_size=224, act="relu", bn="none",
                 init="he_uniform", bias_init=0.0, dropout=0.5, width=1.0, name="squeezenet"):
        super().__init__()
        check_options(name, act, bn, init)
        check_size(name, image_size, 64)
        stem = ch(96 if version == "1_0" else 64, width)
        layers = [conv_bn_act(3, stem, 7 if version == "1_0" else 3, 2, 0, bn=bn, act=act, bias=True),
                  nn.MaxPool2d(3, 2, ceil_mode=True)]
        cin = stem
        for spec in V10 if version == "1_0" else V11:
            if spec == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            s, e = ch(spec[0], width), ch(spec[1], width)
            layers.append(Fire(cin, s, e, e, bn, act))
            cin = 2 * e
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(cin, num_classes, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        init_weights(self, init, act, bias_init)

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


for _v in ("1_0", "1_1"):
    register_recipe(f"squeezenet{_v}", defaults=DEFAULTS, min_image_size=64)(
        lambda _v=_v, **kw: SqueezeNet(_v, name=f"squeezenet{_v}", **kw))
