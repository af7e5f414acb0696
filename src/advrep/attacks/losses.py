"""Per-sample attack objectives, each to be *maximized* by the attacker.

Every loss takes fp32 logits ``(B, K)`` and labels ``(B,)`` and returns ``(B,)``, so that
one sample's gradient never depends on the rest of the batch and restarts can pick the
strongest example per sample.

:func:`attack_loss` is the one lookup from a loss spec (``"ce"``, ``"cw"``, ``"kl"`` or a
callable) to the function an attack maximizes; the attacks and the methods' attack hooks
(:attr:`advrep.methods.Method.attack_hooks`) all resolve specs through it.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tensors import fp32

AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def kl_to(clean_logits: torch.Tensor) -> AttackLoss:
    """TRADES' attack objective ``KL(p_clean || p_adv)`` against fixed clean probabilities."""
    p = F.softmax(fp32(clean_logits.detach()), dim=1)
    log_p = F.log_softmax(fp32(clean_logits.detach()), dim=1)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (p * (log_p - F.log_softmax(logits, dim=1))).sum(1)

    return loss


def clean_targets(model, x: torch.Tensor) -> torch.Tensor:
    """The clean logits a KL attack measures against: no gradients, and in fp32 even under
    autocast (bf16 rounding of the target would outweigh what the attack's first step measures
    from ``x + 0.001·N(0, 1)``; one forward pass per batch)."""
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return fp32(model(x))


def targeted_loss(loss: AttackLoss) -> AttackLoss:
    """Turn an untargeted objective into one that pulls towards the label given as target."""
    if loss is ce:
        return lambda logits, t: -ce(logits, t)
    if loss is cw_margin:
        return lambda logits, t: -cw_margin(logits, t)  # z_t - max_{j != t} z_j
    raise ConfigError("targeted attacks support the 'ce' and 'cw' losses")


LOSSES = {"ce": ce, "cw": cw_margin}
LossSpec = Union[str, AttackLoss]


def attack_loss(spec: LossSpec, *, targeted: bool = False, model=None, x: Optional[torch.Tensor] = None,
                clean_logits: Optional[torch.Tensor] = None) -> AttackLoss:
    """The per-sample objective that ``spec`` names. ``"kl"`` (TRADES) is measured against
    ``clean_logits``, or against ``model(x)`` computed here once when they are not given; a
    callable is used as it is; ``targeted`` turns ``ce``/``cw`` towards the label given."""
    if callable(spec):
        return spec
    if spec == "kl":
        if targeted:
            raise ConfigError("the 'kl' attack loss has no targeted form")
        if clean_logits is None:
            clean_logits = clean_targets(model, x)
        return kl_to(clean_logits)
    if spec not in LOSSES:
        raise ConfigError(f"unknown attack loss '{spec}'; use one of: {', '.join(LOSSES)}, kl, or a callable")
    return targeted_loss(LOSSES[spec]) if targeted else LOSSES[spec]
