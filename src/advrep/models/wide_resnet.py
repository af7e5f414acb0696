"""WideResNet as in the TRADES repository (WRN-34-10, WRN-28-10), same parameter names.

TRADES' file also builds an unused ``sub_block1``; it is left out here (it never touches
the forward pass), and the checkpoint loader drops its keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import MODELS, Classifier, Normalization
from .heads import build_head


class BasicBlock(nn.Module):
    """Pre-activation wide block; when the width changes, the 1x1 ``convShortcut`` reads the
    activated input, otherwise the raw input is added back."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return out + (x if self.equal_in_out else self.convShortcut(activated))


class NetworkBlock(nn.Module):
    """A group of ``n`` blocks; kept as a module with ``layer`` for the reference key names."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride)]
        blocks += [BasicBlock(out_planes, out_planes, 1) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Classifier):
    """WRN-depth-widen: three groups of (depth-4)/6 blocks at widths 16k, 32k, 64k."""

    head_path = "fc"
    stage_paths = ("block1", "block2", "block3")

    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int = 10,
        head: str = "linear",
        in_channels: int = 3,
        image_size: int = 32,
        normalization: Normalization = None,
        **head_kwargs,
    ):
        super().__init__(num_classes, in_channels, normalization)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.feature_dim = channels[3]
        self.fc = build_head(head, self.feature_dim, num_classes, **head_kwargs)
        self._init_like_reference()

    @torch.no_grad()
    def _init_like_reference(self) -> None:
        """He init with fan-out for convolutions and a zero linear bias, as TRADES does, so
        training from scratch reproduces the published setting."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("wrn-34-10")
def wrn_34_10(**kwargs) -> WideResNet:
    """WRN-34-10, the standard CIFAR-10 adversarial-training backbone (640-d features)."""
    return WideResNet(34, 10, **kwargs)


@MODELS.register("wrn-28-10")
def wrn_28_10(**kwargs) -> WideResNet:
    """WRN-28-10 (640-d features)."""
    return WideResNet(28, 10, **kwargs)
