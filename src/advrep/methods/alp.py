"""Adversarial logit pairing, ALP (Kannan, Kurakin, Goodfellow, "Adversarial Logit
Pairing", arXiv 1803.06373, 2018).

Attack: PGD maximizing ``CE(f(x'), y)`` from a uniform start (as later CIFAR reproductions
do); ``attack_target=least-likely`` gives the original's targeted PGD towards the class the
clean prediction finds least likely.
Loss: ``½·CE(f, y) + ½·CE(f', y) + λ·mean_{i,k}(f_ik − f'_ik)²``, no stop-gradient.
Defaults: λ = 0.5; threat model as for pgd-at. Takes add-on terms (``alp+...``).

Example::

    advrep train --config configs/alp-mnist-small-cnn.yaml --method.lam=0.5
"""

from dataclasses import dataclass
from typing import Literal

import torch

from .base import Method, MethodConfig, accuracy, bn_mode, ce, squared_logit_distance
from .registry import register


@dataclass
class AlpConfig(MethodConfig):
    lam: float = 0.5
    attack_target: Literal["none", "least-likely"] = "none"


@register("alp")
class Alp(Method):
    Config = AlpConfig
    base = True
    formula = "½·CE(f, y) + ½·CE(f', y) + λ·mean_{i,k}(f_ik − f'_ik)²; attack: PGD on CE(f', y)"
    source = "Kannan, Kurakin, Goodfellow, 2018 (arXiv 1803.06373)"

    def perturb(self, model, x, y, threat):
        if self.cfg.attack_target == "least-likely":
            with bn_mode(model, self.cfg.attack_bn), torch.no_grad():
                target = model(x).argmin(1)
            return self.attack(model, x, target, threat, loss="ce", random_start="uniform", targeted=True)
        return self.attack(model, x, y, threat, loss="ce", random_start="uniform")

    def loss(self, p, y):
        ce_nat, ce_adv = ce(p.logits, y), ce(p.logits_adv, y)
        pair = squared_logit_distance(p.logits, p.logits_adv)
        loss = 0.5 * ce_nat + 0.5 * ce_adv + self.cfg.lam * pair
        return loss, {"loss_ce": ce_nat.detach(), "loss_ce_adv": ce_adv.detach(), "loss_pair": pair.detach(),
                      "acc": accuracy(p.logits, y), "acc_adv": accuracy(p.logits_adv, y)}
