"""Add-on term ``lp``: logit pairing between the clean and adversarial logits, as in ALP
(Kannan, Kurakin, Goodfellow, arXiv 1803.06373).

Value: ``mean_{i,k}(f_ik − f'_ik)²`` with gradient through both sides; weight λ = 0.5.
It reads the logits the base objective already computed; with ``pgd-at`` (adversarial pass
only) the clean pass runs once for it.

Example::

    advrep train --config configs/trades-mnist-small-cnn.yaml --method=trades+lp --terms.lp.weight=0.5
"""

from dataclasses import dataclass

from .base import Term, TermConfig, squared_logit_distance
from .registry import register_term


@dataclass
class LpConfig(TermConfig):
    weight: float = 0.5


@register_term("lp")
class LogitPairing(Term):
    Config = LpConfig
    formula = "λ·mean_{i,k}(f_ik − f'_ik)²"
    source = "Kannan, Kurakin, Goodfellow, 2018 (arXiv 1803.06373)"

    def value(self, p, y):
        pair = squared_logit_distance(p.logits, p.logits_adv)
        return pair, {"pair": pair.detach()}
