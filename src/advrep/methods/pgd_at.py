"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018).

Attack: PGD maximizing ``CE(f(x'), y)`` from a uniform start in the eps-ball.
Loss: ``CE(f(x'), y)``.
Threat model and defaults: Linf, eps 8/255, step 2/255, 10 steps (CIFAR-like);
eps 0.3, step 0.01, 40 steps (MNIST-like); BatchNorm in eval mode during the attack.
Takes add-on terms (``pgd-at+lp``).

Example::

    advrep train --config configs/pgd-at-mnist-small-cnn.yaml
"""

from .base import Method, accuracy, ce
from .registry import register


@register("pgd-at")
class PGDAT(Method):
    base = True
    formula = "CE(f', y); attack: PGD on CE(f', y) from a uniform start"
    source = "Madry et al., ICLR 2018 (arXiv 1706.06083)"

    def perturb(self, model, x, y, threat):
        return self.attack(model, x, y, threat, loss="ce", random_start="uniform")

    def loss(self, p, y):
        loss = ce(p.logits_adv, y)
        return loss, {"loss_ce_adv": loss.detach(), "acc_adv": accuracy(p.logits_adv, y)}
