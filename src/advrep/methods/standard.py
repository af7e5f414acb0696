"""Standard training: ``CE(f(x), y)`` on clean data, no attack.

Threat model: none during training (the threat section still sets validation and evaluation).

Example::

    advrep train --config configs/standard-mnist-small-cnn.yaml
"""

from .base import Method, accuracy, ce
from .registry import register


@register("standard")
class Standard(Method):
    adversarial = False
    formula = "CE(f, y)"
    source = "standard empirical risk minimization (no attack)"

    def perturb(self, model, x, y, threat):
        return x

    def loss(self, p, y):
        loss = ce(p.logits, y)
        return loss, {"loss_ce": loss.detach(), "acc": accuracy(p.logits, y)}
