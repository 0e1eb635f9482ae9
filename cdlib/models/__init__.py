"""Models by name.

>>> from cdlib import models
>>> net = models.create("cifar_resnet50", num_classes=100)
>>> logits = net(images)                                   # (N, 100)
>>> logits, feats = net(images, return_features=True)      # feats: 4 stage maps
>>> net.stage_channels                                     # (256, 512, 1024, 2048)

CIFAR-stem ResNets (``cifar_resnet18 ... 152`` and the narrow ``_w8``/``_w16``/
``_w32`` variants for CPU work) and torchvision's ImageNet ResNets
(``resnet18/34/50``) share that interface.
"""

from __future__ import annotations

from typing import Tuple

from torch import nn

from ..errors import ConfigError, is_whole, shown
from ..registry import Registry
from . import cifar_resnet, imagenet

__all__ = ["create", "names", "stage_channels", "MODELS"]

# Checked before a layer is built: 10**12 classes would ask for a 128 TB classifier. ImageNet-21k has
# 21,841 classes; images have 1 to a few channels (hyperspectral ones some hundreds).
MAX_CLASSES = 100_000
MAX_CHANNELS = 1024

# Model name -> the module that builds it (cifar_resnet or imagenet).
MODELS: Registry = Registry("model")
for _family in (cifar_resnet, imagenet):
    for _name in (cifar_resnet.CIFAR_ARCHITECTURES if _family is cifar_resnet else imagenet.IMAGENET_ARCHITECTURES):
        MODELS.register(_name, _family, locked=True)


def names() -> list:
    """Every model name :func:`create` accepts."""
    return MODELS.names()


def create(name: str, num_classes: int = 100, pretrained: bool = False, in_channels: int = 3) -> nn.Module:
    """Build a model by name. ``pretrained`` applies to the ImageNet ResNets only."""
    MODELS.get(name)
    for setting, value, most in (("num_classes", num_classes, MAX_CLASSES), ("in_channels", in_channels, MAX_CHANNELS)):
        if not is_whole(value) or not 1 <= value <= most:
            raise ConfigError(f"{setting} must be a whole number from 1 to {most}, got {shown(value)}; "
                              "pass the data set's classes and image channels (bundle.num_classes).")
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained must be True or False, got {pretrained!r}.")
    if name in cifar_resnet.CIFAR_ARCHITECTURES:
        if pretrained:
            raise ConfigError(f"no pretrained weights ship for {name}; train it with `cdlib train` or pass "
                              "pretrained=False.")
        return cifar_resnet.build(name, num_classes=num_classes, in_channels=in_channels)
    if in_channels != 3:
        raise ConfigError(f"{name} is torchvision's ImageNet ResNet and takes 3-channel images, not {in_channels}.")
    return imagenet.build(name, num_classes=num_classes, pretrained=pretrained)


def stage_channels(name: str) -> Tuple[int, ...]:
    """Channel counts of the four stage features of model ``name``, without building it."""
    MODELS.get(name)
    if name in cifar_resnet.CIFAR_ARCHITECTURES:
        block, _, width = cifar_resnet.CIFAR_ARCHITECTURES[name]
        return tuple(width * 2**i * block.expansion for i in range(4))
    return imagenet.IMAGENET_ARCHITECTURES[name][2]
