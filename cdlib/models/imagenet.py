"""ImageNet ResNets from torchvision with stage features taken by torchvision's
feature extraction (an FX graph of the unmodified torchvision model).

Parameter names are torchvision's under a ``body.`` prefix; pretrained weights
download through torchvision on first use (on Colab; never in the tests).
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError
from .cifar_resnet import check_images

# torchvision is imported where it is used: importing it costs seconds, and most
# runs (CIFAR, digits) never touch an ImageNet model.

_STAGES = ("layer1", "layer2", "layer3", "layer4")

IMAGENET_ARCHITECTURES = {
    # name -> (torchvision constructor, weights enum name, stage channels)
    "resnet18": ("resnet18", "ResNet18_Weights", (64, 128, 256, 512)),
    "resnet34": ("resnet34", "ResNet34_Weights", (64, 128, 256, 512)),
    "resnet50": ("resnet50", "ResNet50_Weights", (256, 512, 1024, 2048)),
}


class TorchvisionResNet(nn.Module):
    """Wraps a torchvision ResNet; ``forward(x, return_features=True)`` adds stage features."""

    def __init__(self, net: nn.Module, stage_channels: Tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.body = create_feature_extractor(net, return_nodes=dict(zip(_STAGES, _STAGES), fc="logits"))
        self.stage_channels = stage_channels
        self.num_classes = num_classes

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        check_images(x, 3)
        out = self.body(x)
        if return_features:
            return out["logits"], [out[stage] for stage in _STAGES]
        return out["logits"]


def build(name: str, num_classes: int = 1000, pretrained: bool = False) -> TorchvisionResNet:
    import torchvision

    if name not in IMAGENET_ARCHITECTURES:
        raise ConfigError(f"unknown ImageNet model {name!r}; choose one of {', '.join(sorted(IMAGENET_ARCHITECTURES))}.")
    constructor, weights_enum, channels = IMAGENET_ARCHITECTURES[name]
    weights = getattr(torchvision.models, weights_enum).DEFAULT if pretrained else None
    if pretrained and num_classes != 1000:
        raise ConfigError(f"pretrained {name} weights have 1000 ImageNet classes, but num_classes={num_classes}; "
                          "use pretrained=False or num_classes=1000.")
    net = getattr(torchvision.models, constructor)(weights=weights, num_classes=num_classes)
    return TorchvisionResNet(net, channels, num_classes)
