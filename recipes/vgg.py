"""VGG: K. Simonyan and A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv:1409.1556). Configurations A, B, D, E (VGG-11/13/16/19), with and
without BatchNorm (the _bn variants, as in torchvision, which keep the convolution biases).
"""
import torch
import torch.nn as nn

from toolkit.layers import ch, check_options, check_size, conv_bn_act, init_weights, make_act
from toolkit.registry import TrainDefaults, register_recipe

CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}
# Paper §3.1: SGD, momentum 0.9, weight decay 5e-4, batch 256, lr 1e-2 divided by 10 when the
# validation accuracy stopped improving (3 times), 74 epochs; dropout 0.5 on the first two FC layers.
DEFAULTS = TrainDefaults(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=32,
                         epochs=74, lr_schedule="multistep", lr_step_epochs=(30, 50, 65),
                         lr_factor=0.1, image_size=224,
                         source="Simonyan & Zisserman 2015, §3.1 (batch 256 = 8 GPUs x 32)")


class VGG(nn.Module):
    def __init__(self, depth, num_classes=1000, image_size=224, act="relu", bn="none",
                 init="he_normal", bias_init=0.0, dropout=0.5, width=1.0, name="vgg"):
        super().__init__()
        check_options(name, act, bn, init)
        check_size(name, image_size, 32)
        layers, cin = [], 3
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(conv_bn_act(cin, ch(v, width), 3, bn=bn, act=act, bias=True))
                cin = ch(v, width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))  # reduced input sizes keep the FC shapes
        hidden = ch(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, hidden), make_act(act, hidden), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), make_act(act, hidden), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))
        init_weights(self, init, act, bias_init)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _register(depth, bn):
    name = f"vgg{depth}" + ("_bn" if bn else "")

    @register_recipe(name, defaults=DEFAULTS, min_image_size=32)
    def build(**kw):
        return VGG(depth, name=name, **{"bn": "before" if bn else "none", **kw})
    return build


for _depth in CONFIGS:
    for _bn in (False, True):
        _register(_depth, _bn)
