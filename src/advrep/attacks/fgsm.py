"""FGSM (Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR
2015): one signed gradient step of size eps on the cross-entropy, from the clean image
(FGSM-RS training adds a uniform start); with L1, one sparse step (see :mod:`.pgd`). Evaluation
attack ``fgsm``: Linf, L2 or L1 at the
evaluation's eps, no settings of its own.

Example::

    x_adv = fgsm(model, x, y, eps=8/255)
    advrep eval RUN --eval.attacks=[fgsm,pgd]
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn as nn

from .losses import LossSpec
from .pgd import pgd
from .registry import Attack, register_attack


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Literal["Linf", "L2", "L1"] = "Linf",
    loss: LossSpec = "ce",
    step_size: Optional[float] = None,
    random_start: Optional[str] = None,
    targeted: bool = False,
) -> torch.Tensor:
    """One gradient step of size ``step_size`` (default eps); FGSM-RS adds a uniform start."""
    return pgd(model, x, y, eps=eps, step_size=eps if step_size is None else step_size, steps=1,
               norm=norm, loss=loss, random_start=random_start, targeted=targeted)


@register_attack("fgsm")
class FGSM(Attack):
    title = "FGSM"

    def perturb(self, model, x, y, *, threat, ev, num_classes, device):
        return fgsm(model, x, y, eps=threat.eps, norm=threat.norm)
