"""CW∞: PGD on the Carlini-Wagner margin ``max_{j≠y} z_j − z_y`` (Carlini & Wagner, IEEE S&P
2017, in its PGD form as Madry et al. and TRADES evaluate with it), from a uniform start:
``eval.cw_steps`` steps (30) of ``eval.pgd_step_size``, ``eval.pgd_restarts`` restarts. The margin
does not saturate like the cross-entropy, so it catches models whose softmax is overconfident.

Example::

    advrep eval RUN --eval.attacks=[pgd,cw] --eval.cw_steps=100
"""

from __future__ import annotations

from .pgd import PGD
from .registry import register_attack


@register_attack("cw")
class CW(PGD):
    title = "CW"
    loss = "cw"
    steps_key = "cw_steps"

    def label(self, ev) -> str:
        return f"CW∞-{ev.cw_steps}"
