"""What every advrep network shares: input normalization, the head slot, and the feature API.

Methods such as Adv-DPNP, ANCRA and SPAT regularize the penultimate features, so every
network exposes them through ``forward_features`` instead of each method hooking layers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry = Registry("model")

Normalization = tuple[Sequence[float], Sequence[float]] | None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, or the identity when ``normalization`` is None.

    Data loaders and attacks work in [0, 1] pixel space (epsilon balls are defined there),
    so the model normalizes itself. The buffers are non-persistent: the reference
    checkpoints have no such keys, and the statistics come from the config anyway.
    """

    def __init__(self, normalization: Normalization, in_channels: int):
        super().__init__()
        mean = std = None
        if normalization is not None:
            try:
                mean_values, std_values = normalization
                mean = torch.tensor([float(v) for v in mean_values]).view(1, -1, 1, 1)
                std = torch.tensor([float(v) for v in std_values]).view(1, -1, 1, 1)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"normalization must be a pair (mean list, std list), got {normalization!r}"
                ) from None
            if mean.numel() != in_channels or std.numel() != in_channels:
                raise ConfigError(
                    f"normalization needs {in_channels} mean and std values (one per input "
                    f"channel), got {mean.numel()} and {std.numel()}"
                )
            if (std <= 0).any():
                raise ConfigError(f"normalization std values must be positive, got {std.flatten().tolist()}")
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if self.mean is None:
            return "identity"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Classifier(nn.Module):
    """Base class: ``normalize`` -> ``features`` (penultimate vector) -> ``head`` -> logits.

    Subclasses build their layers, set ``feature_dim`` and ``head_path`` (where the head
    lives in the reference implementation, so published state dicts load), and implement
    ``features`` on normalized input.
    """

    head_path: str
    feature_dim: int
    # modules whose outputs are the network's stages, in order (for per-stage read-outs)
    stage_paths: tuple[str, ...] = ()
    # the last module before any dropout, where the penultimate features come after a dropout
    # (small-cnn); None: the penultimate features are free of dropout noise
    pre_dropout_path: str | None = None

    def __init__(self, num_classes: int, in_channels: int, normalization: Normalization):
        super().__init__()
        if int(num_classes) < 1 or int(in_channels) < 1:
            raise ConfigError(
                f"num_classes and in_channels must be positive, got {num_classes} and {in_channels}"
            )
        self.num_classes = int(num_classes)
        self.normalize = Normalize(normalization, in_channels)

    @property
    def head(self) -> nn.Module:
        """The head module, looked up at its reference path rather than stored twice
        (a second registration would duplicate its state-dict keys)."""
        return self.get_submodule(self.head_path)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature vector (N, feature_dim) of an already normalized input."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` from one pass, for methods that regularize features."""
        h = self.features(self.normalize(x))
        return h, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    @contextlib.contextmanager
    def capture(self, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """A dict that receives the output of each module in ``paths`` (the last one, if a
        module runs twice) during the forward passes inside the block: forward hooks, so the
        architectures' forward code stays single. A compiled graph does not run hooks added
        after it was made: run eager code inside the block (:func:`compiling.eager_forward_features`)."""
        outputs: dict[str, torch.Tensor] = {}
        modules = []
        for path in paths:
            try:
                modules.append((path, self.get_submodule(path)))
            except AttributeError:
                raise ConfigError(f"{type(self).__name__} has no module '{path}'") from None
        handles = [module.register_forward_hook(lambda _m, _i, out, path=path: outputs.__setitem__(path, out))
                   for path, module in modules]
        try:
            yield outputs
        finally:
            for handle in handles:
                handle.remove()

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of every stage in ``stage_paths``, then ``features`` and ``logits``, from
        one pass. It runs the eager ``forward_features`` even on a compiled model: a compiled
        graph does not run hooks added after it was made."""
        from ..compiling import eager_forward_features

        with self.capture(self.stage_paths) as outputs:
            h, logits = eager_forward_features(self)(x)
        return {**outputs, "features": h, "logits": logits}
