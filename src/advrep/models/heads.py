"""Classification heads, chosen by name, each mapping features (N, d) to logits (N, K).

Parameters are called ``weight`` (and ``bias``) like ``nn.Linear``'s, so a head sits at the
reference attribute path (``linear``, ``fc``, ``classifier.fc3``) with the reference keys.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Linear):
    """The plain affine classifier of the reference networks.

    ``init_std``: None keeps the architecture's own initialization (``nn.Linear``'s, or the
    zero head of small-cnn, as the TRADES reference); a number draws the weight from
    ``N(0, init_std²)`` with a zero bias (0.01 keeps ADR's compactness terms from collapsing the
    small CNN's features, docs/adr.md).
    """

    def __init__(self, in_features: int, num_classes: int, *, init_std: float | None = None):
        super().__init__(in_features, num_classes)
        if init_std is not None and not (isinstance(init_std, (int, float)) and float(init_std) >= 0):
            raise ConfigError(f"linear head init_std must be a number >= 0 (or unset), got {init_std!r}")
        self.init_std = None if init_std is None else float(init_std)
        if self.init_std is not None:
            with torch.no_grad():
                nn.init.normal_(self.weight, std=self.init_std)
                self.bias.zero_()


@HEADS.register("cosine")
class CosineHead(nn.Module):
    """SPAT's hypersphere classifier: ``scale * (h/|h| . w_j/|w_j| + b_j)``.

    SPAT keeps the class rows on the unit sphere by projecting them after each step, with no
    gradient through that projection. The forward uses a straight-through projection (value
    of the unit row, identity gradient to ``weight``) so nothing is written in place inside
    an autograd graph; the trainer calls ``project_()`` after every optimizer step so the
    stored rows stay on the sphere as in the original.
    """

    def __init__(self, in_features: int, num_classes: int, *, scale: float = 1.0):
        super().__init__()
        if not float(scale) > 0:
            raise ConfigError(f"cosine head scale must be positive, got {scale}")
        self.scale = float(scale)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, in_features), dim=1))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w_unit = w + (F.normalize(w, dim=1) - w).detach()
        return self.scale * F.linear(F.normalize(h, dim=1), w_unit, self.bias)

    @torch.no_grad()
    def project_(self) -> None:
        """Put the stored rows back on the unit sphere (call after ``optimizer.step()``)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"


@HEADS.register("prototype")
class PrototypeHead(nn.Module):
    """Adv-DPNP's prototype classifier: logits ``h . c_j`` with ``c_j = alpha * v_j/|v_j|``.

    Fixing the prototypes' norm to ``alpha`` makes the logits depend on feature direction and
    length only, which is what the DPNP regularizers assume.
    """

    def __init__(self, in_features: int, num_classes: int, *, alpha: float = 1.0):
        super().__init__()
        if not float(alpha) > 0:
            raise ConfigError(f"prototype head alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        # Gaussian rows have uniformly distributed directions on the sphere.
        self.weight = nn.Parameter(torch.randn(num_classes, in_features))

    def prototypes(self) -> torch.Tensor:
        """The prototypes c (K, d), differentiable with respect to ``weight``."""
        return self.alpha * F.normalize(self.weight, dim=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.prototypes())

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, alpha={self.alpha}"


def head_options(name: str) -> list[str]:
    """The keyword options head ``name`` accepts (its keyword-only constructor arguments)."""
    params = inspect.signature(HEADS.get(name)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def resolved_options(head: nn.Module, name: str) -> dict:
    """Every option of head ``name`` with the value the built ``head`` holds, defaults included:
    what a checkpoint stores, so it reloads with the same head even after a default changes."""
    return {option: getattr(head, option) for option in head_options(name)}


def check_head(name: str, options: dict) -> None:
    """Raise ConfigError for an unknown head or option, listing the valid choices."""
    valid = head_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"head '{name}' has no option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) if valid else 'none'}"
        )


def build_head(name: str, in_features: int, num_classes: int, **options) -> nn.Module:
    """Construct head ``name`` with its keyword ``options`` (checked by :func:`check_head`)."""
    check_head(name, options)
    return HEADS.get(name)(in_features, num_classes, **options)
