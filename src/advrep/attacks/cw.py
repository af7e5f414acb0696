"""CW∞: PGD on the Carlini-Wagner margin ``max_{j≠y} z_j − z_y`` (Carlini & Wagner, IEEE S&P
2017, in its PGD form as Madry et al. and TRADES evaluate with it), from a uniform start:
``eval.cw_steps`` steps (30) of ``eval.pgd_step_size``, ``eval.pgd_restarts`` restarts. The margin
does not saturate like the cross-entropy, so it catches models whose softmax is overconfident.

Example::

    advrep eval RUN --eval.attacks=[pgd,cw] --eval.cw_steps=100
"""

from __future__ import annotations

from .pgd import pgd
from .registry import Attack, need_positive, register_attack


@register_attack("cw")
class CW(Attack):
    title = "CW"

    def label(self, ev) -> str:
        return f"CW∞-{ev.cw_steps}"

    def check(self, threat, ev) -> None:
        need_positive("eval.cw_steps", ev.cw_steps, integer=True)
        need_positive("eval.pgd_step_size", ev.pgd_step_size)
        need_positive("eval.pgd_restarts", ev.pgd_restarts, integer=True)

    def perturb(self, model, x, y, *, threat, ev, num_classes, device):
        return pgd(model, x, y, eps=threat.eps, norm=threat.norm, step_size=ev.pgd_step_size,
                   steps=ev.cw_steps, restarts=ev.pgd_restarts, loss="cw", random_start="uniform")
