"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018).

Attack: PGD maximizing ``CE(f(x'), y)`` from a uniform start in the eps-ball.
Loss: ``CE(f(x'), y)``.
Threat model and defaults: Linf, eps 8/255, step 2/255, 10 steps (CIFAR-like);
eps 0.3, step 0.01, 40 steps (MNIST-like); BatchNorm in eval mode during the attack.

Example::

    advrep train --config configs/pgd-at-mnist-small-cnn.yaml
"""

from .base import Method, accuracy, ce
from .registry import register


@register("pgd-at")
class PGDAT(Method):
    def perturb(self, model, x, y):
        return self.attack(model, x, y, loss="ce", random_start="uniform")

    def objective(self, model, x, x_adv, y):
        logits_adv = model(x_adv)
        loss = ce(logits_adv, y)
        return loss, {"loss_ce_adv": loss.detach(), "acc_adv": accuracy(logits_adv, y)}
