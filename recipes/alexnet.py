"""AlexNet: A. Krizhevsky, I. Sutskever and G. E. Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NIPS 2012. The single-tower network of §3.5 (96-256-384-384-256
convolutions, 11x11/4, 5x5, 3x3 kernels, overlapping 3x3/2 max-pooling, 4096-4096 FC with dropout),
local response normalisation after the first two convolutions as in §3.3 (k=2, n=5, alpha=1e-4,
beta=0.75) when bn='none'; with bn='before'/'after', BatchNorm replaces LRN on every convolution.

alexnet_owt: the network torchvision's `alexnet` weights are for, from A. Krizhevsky, "One weird
trick for parallelizing convolutional neural networks", arXiv:1404.5997 (2014): 64-192-384-256-256
convolutions, no LRN, the same pooling and 4096-4096 FC head (61.1M parameters). Its defaults are
torchvision's reference recipe for it (references/classification: SGD, lr 0.01 for 8 GPUs x 32,
momentum 0.9, weight decay 1e-4, lr / 10 every 30 epochs, 90 epochs; top-1 56.5% with its weights).
"""
import torch
import torch.nn as nn

from toolkit.layers import ch, check_options, check_size, conv_bn_act, init_weights, make_act
from toolkit.registry import TrainDefaults, register_recipe

# §5: SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 three times when the
# validation error stopped improving, about 90 epochs; random 224 crops of 256 images, flips, PCA
# lighting (§4.1); dropout 0.5.
DEFAULTS = TrainDefaults(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=128,
                         epochs=90, lr_schedule="multistep", lr_step_epochs=(30, 60, 80),
                         lr_factor=0.1, image_size=224, train_aug="random_resized_crop,flip,pca_lighting",
                         source="Krizhevsky et al. 2012, §4-5")
OWT = TrainDefaults(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=32, epochs=90,
                    lr_schedule="step", lr_step_epochs=(30,), lr_factor=0.1, image_size=224,
                    source="torchvision references/classification (alexnet: --lr 0.01, 8 GPUs x 32)")
PAPER_CHANNELS = (96, 256, 384, 384, 256)
OWT_CHANNELS = (64, 192, 384, 256, 256)  # Krizhevsky 2014, as torchvision's alexnet


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, image_size=224, act="relu", bn="none", init="he_normal",
                 bias_init=0.0, dropout=0.5, width=1.0, name="alexnet",
                 channels=PAPER_CHANNELS, lrn=True):
        super().__init__()
        check_options(name, act, bn, init)
        check_size(name, image_size, 64)
        c = [ch(v, width) for v in channels]
        lrn = [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)] if bn == "none" and lrn else []
        pool = nn.MaxPool2d(3, 2)
        self.features = nn.Sequential(
            conv_bn_act(3, c[0], 11, 4, 2, bn=bn, act=act, bias=True), *lrn, pool,
            conv_bn_act(c[0], c[1], 5, 1, 2, bn=bn, act=act, bias=True), *lrn, nn.MaxPool2d(3, 2),
            conv_bn_act(c[1], c[2], 3, bn=bn, act=act, bias=True),
            conv_bn_act(c[2], c[3], 3, bn=bn, act=act, bias=True),
            conv_bn_act(c[3], c[4], 3, bn=bn, act=act, bias=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # 6x6 at 224; keeps the FC shapes at other sizes
        hidden = ch(4096, width)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c[4] * 36, hidden), make_act(act, hidden),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), make_act(act, hidden),
            nn.Linear(hidden, num_classes))
        init_weights(self, init, act, bias_init)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


register_recipe("alexnet", defaults=DEFAULTS, min_image_size=64)(lambda **kw: AlexNet(**kw))
register_recipe("alexnet_owt", defaults=OWT, min_image_size=64)(
    lambda **kw: AlexNet(name="alexnet_owt", channels=OWT_CHANNELS, lrn=False, **kw))
