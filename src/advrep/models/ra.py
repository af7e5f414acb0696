"""Reverse attention (RA) of ANCRA (Zhou, Wang, Liu, Zhou, Gao, arXiv 2310.03358), as a model
option: forward hooks on an existing :class:`~.base.Classifier`, not a copy of each network.

At each RA point of the last stage the block's output map ``z`` gets an auxiliary head
``a = fc(pool(z))`` with the network's own linear classifier ``fc``; then ``z ← z ⊙ fc.weight[j]``
channel-wise and the weighted map continues. ``j`` is the true label in training mode, when the
caller provides labels with :func:`labels`; otherwise (eval mode, or no labels: every attack) it is
``argmax a``, the test-time label selection, so an attack never sees the true label.

RA points, as in the authors' code (ResNet-18: both ``layer4`` blocks; WRN: the last two blocks
of the last group; PreAct ResNet-18: the ``layer4`` blocks):

- ``resnet18``: ``layer4.0``'s output (post-ReLU), then the pooled features before the head;
- ``preact-resnet18`` / ``wrn-34-10`` / ``wrn-28-10``: as the code does, ``z`` is the block output
  through the network's final BN and ReLU (``bn`` / ``bn1``), shared by both points; at the last
  point that is the network's own tail;
- ``small-cnn`` (advrep's adaptation, so MNIST runs can use RA): the two 200-d FC stages,
  ``classifier.relu1`` and ``classifier.relu2`` (the features).

The last point's weighting is applied to the pooled features as the head reads them, which is
exact because average pooling commutes with a per-channel weight: ``pool(z ⊙ w) = pool(z) ⊙ w``.
``forward_features`` therefore returns the unweighted pooled map (what the last auxiliary head
reads) and logits ``fc(h ⊙ w_j)``. The PreAct code of the paper pools 64×64 inputs to 2×2 and
uses a 2048-d classifier; advrep's PreAct ResNet-18 pools globally (512-d), so its weighting is
per channel only.

Each forward records, per RA point, the auxiliary ``(features, logits)``; :func:`auxiliary`
reads those of the last forward. The auxiliary losses (weight ``cr``, ``model.ra_weight`` = 2)
are added by ``Method.objective``.

Example::

    model = ra.enable(models.create("resnet18"), weight=2.0)
    with ra.labels(model, y):            # training mode: weight by the true label's row
        h, logits = model.forward_features(x)
    aux = ra.auxiliary(model)            # [(pool(z_1), a_1), (h, a_2)]
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..tensors import fp32
from .heads import LinearHead

_ATTR = "_reverse_attention"


def _layout(model: nn.Module) -> tuple[tuple[str, ...], Optional[str]]:
    """``(early RA points, final-norm path)``; the last RA point is always the head's input."""
    from .preact_resnet import PreActResNet18
    from .resnet import ResNet18
    from .small_cnn import SmallCNN
    from .wide_resnet import WideResNet

    if isinstance(model, ResNet18):
        return ("layer4.0",), None
    if isinstance(model, PreActResNet18):
        return ("layer4.0",), "bn"
    if isinstance(model, WideResNet):
        n = len(model.block3.layer)
        return ((f"block3.layer.{n - 2}",) if n >= 2 else ()), "bn1"
    if isinstance(model, SmallCNN):
        return ("classifier.relu1",), None
    raise ConfigError(f"model.ra (reverse attention) is defined for resnet18, preact-resnet18, wrn-34-10, "
                      f"wrn-28-10 and small-cnn, not {type(model).__name__}")


class ReverseAttention:
    """The hooks and state of RA on one model (kept on the model, found with :func:`state`)."""

    def __init__(self, model: nn.Module, weight: float):
        early, self.norm = _layout(model)
        if not isinstance(model.head, LinearHead):
            raise ConfigError(f"model.ra needs the linear head (the auxiliary heads share its rows), "
                              f"got {type(model.head).__name__}; drop model.head or set it to linear")
        self.model = model
        self.weight = float(weight)
        self.labels: Optional[torch.Tensor] = None
        self.soft: Optional[float] = None  # a temperature: the adaptive attack's differentiable selection
        self.points = len(early) + 1
        self.aux: list = [None] * self.points  # (features, logits) of each point, last forward
        self.handles = [model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, k=k: self._reweight(k, out)) for k, path in enumerate(early)]
        self.handles.append(model.head.register_forward_pre_hook(self._reweight_head))

    def _row(self, logits: torch.Tensor) -> torch.Tensor:
        """The classifier rows ``W[j]`` (B, C): true labels in training, else the auxiliary argmax;
        inside :func:`soft_selection`, the softmax-weighted mix of all rows instead of the argmax."""
        if self.soft is not None and not (self.model.training and self.labels is not None):
            return F.softmax(logits / self.soft, 1) @ self.model.head.weight
        if self.model.training and self.labels is not None:
            if len(self.labels) != len(logits):
                raise ValueError(f"ra.labels got {len(self.labels)} labels for a batch of {len(logits)}")
            j = self.labels
        else:
            j = logits.argmax(1)
        return self.model.head.weight[j]

    def _point(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Record the auxiliary head of point ``k`` on map ``z`` and return ``z ⊙ W[j]``."""
        head = self.model.head
        h = torch.flatten(F.adaptive_avg_pool2d(z, 1), 1) if z.dim() == 4 else z
        a = F.linear(h, head.weight, head.bias)  # not head(h): that would run the head's own hook
        self.aux[k] = (h, a)
        row = self._row(a)
        return z * (row.view(*row.shape, 1, 1) if z.dim() == 4 else row)

    def _reweight(self, k: int, out: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:  # pre-activation networks: z = ReLU(final BN(block output))
            out = F.relu(self.model.get_submodule(self.norm)(out))
        return self._point(k, out)

    def _reweight_head(self, _module, args):
        return (self._point(self.points - 1, args[0]),)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        delattr(self.model, _ATTR)


def enable(model: nn.Module, weight: float = 2.0) -> nn.Module:
    """Turn RA on for ``model`` (in place; returns it). ``weight`` is ``cr``, the weight of the
    auxiliary losses that ``Method.objective`` adds (the authors' ``cr_beta`` = 2)."""
    if state(model) is not None:
        raise ConfigError("reverse attention is already enabled on this model")
    setattr(model, _ATTR, ReverseAttention(model, weight))  # a plain attribute: no state-dict keys
    return model


def state(model: nn.Module) -> Optional[ReverseAttention]:
    """The model's :class:`ReverseAttention`, or None when RA is off."""
    return getattr(model, _ATTR, None)


def enabled(model: nn.Module) -> bool:
    return state(model) is not None


@contextlib.contextmanager
def labels(model: nn.Module, y: Optional[torch.Tensor]):
    """Within the block, a training-mode forward of an RA model weights by ``y``'s rows (the true
    labels). Eval mode ignores them. A no-op for a model without RA."""
    ra = state(model)
    if ra is None:
        yield
        return
    previous, ra.labels = ra.labels, y
    try:
        yield
    finally:
        ra.labels = previous


@contextlib.contextmanager
def soft_selection(model: nn.Module, temperature: float = 1.0):
    """Within the block, test-time selection uses ``softmax(a/T)·W`` (every row, weighted by the
    auxiliary prediction) instead of ``W[argmax a]``. The argmax has no gradient with respect
    to the input, which hides part of the model from gradient attacks; this differentiable
    stand-in (as BPDA does for a non-differentiable layer) is what the evaluation's adaptive
    attack ``ra-soft`` differentiates, and its examples are then scored on the model as
    deployed. A no-op for a model without RA."""
    ra = state(model)
    if ra is None:
        yield
        return
    previous, ra.soft = ra.soft, float(temperature)
    try:
        yield
    finally:
        ra.soft = previous


def auxiliary(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The auxiliary ``(features, logits)`` of each RA point from the model's last forward pass
    ([] without RA)."""
    ra = state(model)
    return [] if ra is None else list(ra.aux)


def with_auxiliary(model: nn.Module, main: Callable, per_point: Sequence[Callable]) -> Callable:
    """An attack loss ``main(f, y) + cr·mean_k loss_k(a_k, y)`` where ``a_k`` are the auxiliary
    logits of the same forward pass as ``f`` (the authors' attacks all add them)."""
    ra = state(model)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        extra = sum(fn(fp32(a), y) for fn, (_, a) in zip(per_point, ra.aux)) / ra.points
        return main(logits, y) + ra.weight * extra

    return loss
