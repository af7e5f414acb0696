"""FGSM with random start, FGSM-RS ("fast adversarial training"; Wong, Rice, Kolter,
"Fast is better than free: Revisiting adversarial training", ICLR 2020).

Attack: a uniform start in the eps-ball, one signed gradient step of ``step_ratio·eps``
(1.25·eps), projection onto the eps-ball and the image box. ``threat.step_size`` and
``threat.steps`` are not used. Loss: ``CE(f(x'), y)``.
Defaults: step_ratio 1.25; BatchNorm in train mode during the attack, as the original code
runs it. Recipe: a cyclic learning rate 0 → max → 0 over 15 epochs (CIFAR-10, SGD, max 0.2,
peak at half) or 10 epochs (MNIST, Adam, max 5e-3, peak at 2/5), as the authors' scripts.

Example::

    advrep train --config configs/fgsm-rs-cifar10-resnet18.yaml
"""

from dataclasses import dataclass
from typing import Literal

from .base import Method, MethodConfig, accuracy, ce
from .registry import register


@dataclass
class FgsmRsConfig(MethodConfig):
    attack_bn: Literal["eval", "train"] = "train"
    step_ratio: float = 1.25


@register("fgsm-rs")
class FgsmRs(Method):
    Config = FgsmRsConfig
    formula = "CE(f', y); attack: one signed step of 1.25·eps from a uniform start"
    source = "Wong, Rice, Kolter, ICLR 2020 (arXiv 2001.03994)"

    def perturb(self, model, x, y, threat):
        return self.attack(model, x, y, threat, loss="ce", random_start="uniform", steps=1,
                           step_size=self.cfg.step_ratio * threat.eps)

    def loss(self, p, y):
        loss = ce(p.logits_adv, y)
        return loss, {"loss_ce_adv": loss.detach(), "acc_adv": accuracy(p.logits_adv, y)}
