"""The CIFAR ResNet-18 used by the TRADES and MART repositories (same parameter names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Classifier, Normalization
from .heads import build_head


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def add_stages(net: nn.Module, block) -> None:
    """The four two-block stages ``layer1..layer4`` (64, 128, 256, 512 channels; strides
    1, 2, 2, 2) that ResNet-18 and PreAct ResNet-18 share, built from ``block``."""
    in_planes = 64
    for index, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], 1):
        setattr(net, f"layer{index}", nn.Sequential(block(in_planes, planes, stride), block(planes, planes, 1)))
        in_planes = planes


@MODELS.register("resnet18")
class ResNet18(Classifier):
    """ResNet-18 with a 3x3 stride-1 stem for 32x32 images; features are 512-d.

    Global pooling is adaptive, so other input sizes (28x28, 64x64) work too;
    ``image_size`` is accepted for a uniform constructor and not needed.
    """

    head_path = "linear"
    stage_paths = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        num_classes: int = 10,
        head: str = "linear",
        in_channels: int = 3,
        image_size: int = 32,
        normalization: Normalization = None,
        **head_kwargs,
    ):
        super().__init__(num_classes, in_channels, normalization)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        add_stages(self, BasicBlock)
        self.feature_dim = 512
        self.linear = build_head(head, self.feature_dim, num_classes, **head_kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
