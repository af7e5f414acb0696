"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and
Accuracy", ICML 2019), as in the authors' code.

Attack: start ``x + 0.001·N(0, 1)``, PGD maximizing ``KL(sg(p) || p')`` with the clean
probabilities ``p`` computed once (the original recomputes them each step in eval mode,
which gives the same values).
Loss: ``CE(f, y) + β·(1/B)·Σ_i KL(p_i || p'_i)``, nothing detached.
BatchNorm bookkeeping as in the authors' ``trades_loss``, which runs the clean batch a second
time in training mode for the KL term: the running statistics are updated three times per step
(clean, adversarial, clean), so they end up about two-thirds clean. advrep's KL reads the CE's
clean pass and reproduces the second one as a running-statistics-only update without a graph
(:meth:`~advrep.methods.base.Passes.update_bn`); on a network with BatchNorm and no dropout the
loss and its gradient are the code's, since the second pass gives the same values. Where the
network has dropout (the small CNN), the code's KL target draws its own mask; advrep's uses the
CE's (a documented deviation, docs/design.md).
Defaults: β = 6; threat model as for pgd-at; BatchNorm in eval mode during the attack.
Takes add-on terms (``trades+lp``).

Example::

    advrep train --config configs/trades-mnist-small-cnn.yaml --method.beta=6
"""

from dataclasses import dataclass

from ..attacks.losses import clean_targets
from .base import Method, MethodConfig, accuracy, bn_mode, ce, kl_batchmean
from .registry import register


@dataclass
class TradesConfig(MethodConfig):
    beta: float = 6.0


@register("trades")
class Trades(Method):
    Config = TradesConfig
    base = True
    formula = "CE(f, y) + β·(1/B)·Σ_i KL(p_i ‖ p'_i); attack: PGD on KL(sg(p) ‖ p') from x + 0.001·N(0,1)"
    source = "Zhang et al., ICML 2019 (arXiv 1901.08573), official code"

    def perturb(self, model, x, y, threat):
        with bn_mode(model, self.cfg.attack_bn):
            clean_logits = clean_targets(model, x)  # fp32, no gradients
        return self.attack(model, x, y, threat, loss="kl", random_start="normal", clean_logits=clean_logits)

    def loss(self, p, y):
        loss_nat = ce(p.logits, y)
        loss_rob = kl_batchmean(p.logits, p.logits_adv)
        loss = loss_nat + self.cfg.beta * loss_rob
        p.update_bn(p.x)  # the code's second clean training-mode pass: clean, adv, clean
        return loss, {"loss_ce": loss_nat.detach(), "loss_kl": loss_rob.detach(),
                      "acc": accuracy(p.logits, y), "acc_adv": accuracy(p.logits_adv, y)}
