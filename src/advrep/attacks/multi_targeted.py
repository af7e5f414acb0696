"""Multi-targeted PGD (Gowal, Uesato, Qin, Huang, Mann, Kohli, "An Alternative Surrogate Loss
for PGD-based Adversarial Testing", arXiv 1910.09338, 2019): one PGD run per target class
``t ≠ y`` on the margin ``z_t − z_y``, each sample keeping the first misclassified example.
Evaluation attack ``mt``: ``eval.pgd_steps`` steps of ``eval.pgd_step_size`` per target, so it
costs ``K − 1`` times PGD-k.

Example::

    advrep eval RUN --eval.attacks=[pgd,mt]
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ..tensors import fp32
from .pgd import pgd
from .registry import Attack, need_positive, register_attack


def multi_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    num_classes: int,
    norm: Literal["Linf", "L2", "L1"] = "Linf",
) -> torch.Tensor:
    """Multi-targeted PGD (Gowal et al., "An Alternative Surrogate Loss for PGD-based
    Adversarial Testing", 2019): one PGD run per target class ``t != y`` maximizing the margin
    ``z_t − z_y``; each sample keeps the first example that is misclassified, else the one with
    the largest margin. Costs ``(K − 1) · steps`` gradient steps per sample."""
    x, y = x.detach(), y.detach()
    best, best_margin = x.clone(), torch.full((len(x),), float("-inf"), device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for shift in range(1, num_classes):
        target = (y + shift) % num_classes

        def margin(logits, labels, target=target):
            return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)

        x_adv = pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, loss=margin)
        with torch.no_grad():
            logits = fp32(model(x_adv))
        now_fooled = logits.argmax(1) != y
        value = margin(logits, y)
        take = (now_fooled & ~fooled) | (~fooled & ~now_fooled & (value > best_margin))
        best = torch.where(take.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
        best_margin = torch.where(take, value, best_margin)
        fooled |= now_fooled
    return best


@register_attack("mt")
class MultiTargeted(Attack):
    title = "MT-PGD"

    def label(self, ev) -> str:
        return f"MT-PGD-{ev.pgd_steps}"

    def check(self, threat, ev) -> None:
        need_positive("eval.pgd_steps", ev.pgd_steps, integer=True)
        need_positive("eval.pgd_step_size", ev.pgd_step_size)

    def perturb(self, model, x, y, *, threat, ev, num_classes, device):
        return multi_targeted(model, x, y, eps=threat.eps, norm=threat.norm, step_size=ev.pgd_step_size,
                              steps=ev.pgd_steps, num_classes=num_classes)
