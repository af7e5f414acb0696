"""The 4-conv, 3-FC MNIST network of the TRADES and MART papers (same parameter names)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ConfigError
from .base import MODELS, Classifier, Normalization
from .heads import LinearHead, build_head


@MODELS.register("small-cnn")
class SmallCNN(Classifier):
    """Convolutions without padding, so ``fc1``'s input size follows from ``image_size``
    (4x4 maps for 28x28 MNIST, 5x5 for 32x32); features are the 200-d output of fc2+ReLU, which
    sits after ``Dropout(0.5)``; the convolutional features (``feature_extractor``) are the last
    output before any dropout."""

    head_path = "classifier.fc3"
    pre_dropout_path = "feature_extractor"
    stage_paths = ("feature_extractor.maxpool1", "feature_extractor.maxpool2", "classifier.relu1")

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
        side = ((int(image_size) - 4) // 2 - 4) // 2
        if side < 1:
            raise ConfigError(f"small-cnn needs images of at least 14x14, got image_size={image_size}")
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 32, 3),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(32, 32, 3),
                relu2=nn.ReLU(),
                maxpool1=nn.MaxPool2d(2, 2),
                conv3=nn.Conv2d(32, 64, 3),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(64, 64, 3),
                relu4=nn.ReLU(),
                maxpool2=nn.MaxPool2d(2, 2),
            )
        )
        self.feature_dim = 200
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(64 * side * side, 200),
                relu1=nn.ReLU(),
                drop=nn.Dropout(0.5),
                fc2=nn.Linear(200, 200),
                relu2=nn.ReLU(),
                fc3=build_head(head, self.feature_dim, num_classes, **head_kwargs),
            )
        )
        self._init_like_reference()

    @torch.no_grad()
    def _init_like_reference(self) -> None:
        """Kaiming-normal convolutions with zero bias and a zero linear head, as the
        reference does (unless the head sets ``init_std``); other heads keep their own init (a
        zero prototype has no direction)."""
        for m in self.feature_extractor.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                m.bias.zero_()
        if isinstance(self.head, LinearHead) and self.head.init_std is None:
            self.head.weight.zero_()
            self.head.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.flatten(self.feature_extractor(x), 1)
        return self.classifier[:-1](out)
