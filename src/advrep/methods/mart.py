"""MART (Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified
Examples", ICLR 2020), as in the authors' code.

Attack: start ``x + 0.001·N(0, 1)``, PGD maximizing ``CE(f(x'), y)``.
Loss, with ``t_i`` the most likely wrong class under attack:
``L_adv = CE(f', y) + mean_i −log(1.0001 − p'_{i,t_i} + 1e-12)`` (boosted CE) and
``L_rob = (1/B)·Σ_i KL(p_i ‖ p'_i)·(1.0000001 − p_{i,y_i})`` (KL written as the code does:
target ``p``, input ``log(p' + 1e-12)``); total ``L_adv + β·L_rob``.
Defaults: β = 6 (the official script; several reproductions use 5); threat model as for
pgd-at; BatchNorm in eval mode during the attack. Takes add-on terms (``mart+lp``).

Example::

    advrep train --config configs/mart-cifar10-resnet18.yaml --method.beta=5
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..tensors import fp32
from .base import Method, MethodConfig, accuracy, ce
from .registry import register


@dataclass
class MartConfig(MethodConfig):
    beta: float = 6.0


@register("mart")
class Mart(Method):
    Config = MartConfig
    base = True
    formula = ("CE(f', y) − mean log(1.0001 − p'_t) + β·(1/B)·Σ_i KL(p_i ‖ p'_i)·(1 − p_{i,y}); "
               "attack: PGD on CE(f', y) from x + 0.001·N(0,1)")
    source = "Wang et al., ICLR 2020 (openreview rklOg6EFwS), official code"

    def perturb(self, model, x, y, threat):
        return self.attack(model, x, y, threat, loss="ce", random_start="normal")

    def loss(self, p, y):
        logits, logits_adv = fp32(p.logits), fp32(p.logits_adv)
        adv_probs = F.softmax(logits_adv, dim=1)
        top2 = adv_probs.argsort(dim=1)[:, -2:]
        rival = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        boost = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), rival)
        loss_adv = ce(logits_adv, y) + boost
        nat_probs = F.softmax(logits, dim=1)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = (torch.xlogy(nat_probs, nat_probs) - nat_probs * torch.log(adv_probs + 1e-12)).sum(1)
        loss_rob = (kl * (1.0000001 - true_probs)).sum() / len(y)
        loss = loss_adv + self.cfg.beta * loss_rob
        return loss, {"loss_adv": loss_adv.detach(), "loss_boost": boost.detach(), "loss_kl": loss_rob.detach(),
                      "acc": accuracy(logits, y), "acc_adv": accuracy(logits_adv, y)}
