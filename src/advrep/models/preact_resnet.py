"""PreAct ResNet-18 of Wong et al.'s fast adversarial training and Rice et al.'s
robust-overfitting code (same parameter names, so their checkpoints load)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Classifier, Normalization
from .heads import build_head
from .resnet import add_stages


class PreActBlock(nn.Module):
    """BN-ReLU before each convolution; the projection shortcut reads the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


@MODELS.register("preact-resnet18")
class PreActResNet18(Classifier):
    """PreAct ResNet-18 ending in BN-ReLU (``bn``) before pooling; features are 512-d.

    Pooling is adaptive, so ``image_size`` is accepted for a uniform constructor only.
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
        add_stages(self, PreActBlock)
        self.bn = nn.BatchNorm2d(512)
        self.feature_dim = 512
        self.linear = build_head(head, self.feature_dim, num_classes, **head_kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
