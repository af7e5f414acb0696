"""Networks and heads, built by name with :func:`create`.

Every model takes inputs in [0, 1], normalizes them itself, and offers
``forward(x) -> logits`` and ``forward_features(x) -> (features, logits)``.
"""

from __future__ import annotations

from . import preact_resnet, resnet, small_cnn, wide_resnet  # noqa: F401  (registers the models)
from .base import MODELS, Classifier, Normalization, Normalize
from .heads import HEADS, CosineHead, LinearHead, PrototypeHead, build_head, check_head, head_options

__all__ = [
    "HEADS",
    "MODELS",
    "Classifier",
    "CosineHead",
    "LinearHead",
    "Normalize",
    "PrototypeHead",
    "build_head",
    "check_head",
    "create",
    "head_options",
]


def create(
    name: str,
    num_classes: int = 10,
    head: str = "linear",
    in_channels: int = 3,
    image_size: int = 32,
    normalization: Normalization = None,
    **head_kwargs,
) -> Classifier:
    """Build model ``name`` with head ``head``; ``head_kwargs`` go to the head
    (``scale`` for cosine, ``alpha`` for prototype). Unknown names raise ConfigError."""
    check_head(head, head_kwargs)  # fail before spending time on a large network
    return MODELS.get(name)(
        num_classes=num_classes,
        head=head,
        in_channels=in_channels,
        image_size=image_size,
        normalization=normalization,
        **head_kwargs,
    )
