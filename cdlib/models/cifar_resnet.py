"""ResNets with the CIFAR stem (3x3 conv, stride 1, no max-pool) used by the paper.

Every model returns logits, or ``(logits, [stage1, ..., stage4])`` when called
with ``return_features=True``; the stage features are the post-ReLU outputs
of layer1..layer4, as the paper's CD loss uses them. ``stage_channels`` gives
their channel counts without running the model.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Type, Union

import torch
from torch import nn

from ..errors import ConfigError


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


def check_images(x, channels: int) -> None:
    """A model's input is a (N, channels, H, W) floating batch: otherwise one sentence, not a convolution's
    RuntimeError. Shapes only, so no GPU step waits for it."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"the model takes a (batch, {channels}, height, width) floating-point tensor of "
                          f"{channels}-channel images, got {got}; build the model with the data set's channels "
                          "(models.create(..., in_channels=...)) and normalise the images to floats.")


class CifarResNet(nn.Module):
    """A four-stage ResNet for small images: stages at strides 1, 2, 4, 8."""

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        blocks_per_stage: Sequence[int],
        num_classes: int = 100,
        base_width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_planes = base_width
        for index, (width, count) in enumerate(zip(widths, blocks_per_stage)):
            layers = []
            for b in range(count):
                layers.append(block(in_planes, width, stride=2 if (index > 0 and b == 0) else 1))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.stage_channels: Tuple[int, ...] = tuple(w * block.expansion for w in widths)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        check_images(x, self.stem[0].in_channels)
        out = self.stem(x)
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = stage(out)
            features.append(out)
        logits = self.fc(torch.flatten(self.pool(out), 1))
        return (logits, features) if return_features else logits


# name -> (block, blocks per stage, base width). The paper's models use width 64;
# the narrow ones train on a CPU in seconds and keep the same four-stage shape.
CIFAR_ARCHITECTURES = {
    "cifar_resnet18": (BasicBlock, (2, 2, 2, 2), 64),
    "cifar_resnet34": (BasicBlock, (3, 4, 6, 3), 64),
    "cifar_resnet50": (Bottleneck, (3, 4, 6, 3), 64),
    "cifar_resnet101": (Bottleneck, (3, 4, 23, 3), 64),
    "cifar_resnet152": (Bottleneck, (3, 8, 36, 3), 64),
    "cifar_resnet10_w4": (BasicBlock, (1, 1, 1, 1), 4),
    "cifar_resnet10_w8": (BasicBlock, (1, 1, 1, 1), 8),
    "cifar_resnet10_w16": (BasicBlock, (1, 1, 1, 1), 16),
    "cifar_resnet18_w16": (BasicBlock, (2, 2, 2, 2), 16),
    "cifar_resnet18_w32": (BasicBlock, (2, 2, 2, 2), 32),
}


def build(name: str, num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    block, blocks, width = CIFAR_ARCHITECTURES[name]
    return CifarResNet(block, blocks, num_classes=num_classes, base_width=width, in_channels=in_channels)
