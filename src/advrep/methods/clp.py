"""Clean logit pairing, CLP (Kannan, Kurakin, Goodfellow, "Adversarial Logit Pairing",
arXiv 1803.06373, 2018).

No attack: the first and second halves of each clean batch are paired sample by sample.
Loss: ``CE(f, y) + λ·mean_{i,k}(f_ik − f_{i+B/2,k})²`` (an odd batch's last sample enters
the cross-entropy only).
Option ``noise`` (advrep's, default 0 = the formula above): train on ``clip(x + noise·N(0, I))``
instead of ``x``, the Gaussian input noise that the logit-pairing and logit-squeezing studies
train these regularizers with (e.g. Summers & Dinneen, arXiv 1910.11585).
Defaults: λ = 0.5 (advrep's choice, equal to ALP's; METHODS.md fixes no value). The threat
model sets validation and evaluation only. CLP was later shown to mask gradients rather than
give robustness (Engstrom, Ilyas, Athalye 2018; Mosbach et al. 2018): evaluate it with care.

Example::

    advrep train --config configs/clp-mnist-small-cnn.yaml
"""

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Method, MethodConfig, accuracy, ce, squared_logit_distance
from .registry import register


@dataclass
class ClpConfig(MethodConfig):
    lam: float = 0.5
    noise: float = 0.0  # std of Gaussian noise added to the training inputs (0: none)


@register("clp")
class Clp(Method):
    Config = ClpConfig
    adversarial = False
    formula = "CE(f, y) + λ·mean_{i,k}(f_ik − f_{i+B/2,k})² over the two halves of a clean batch"
    source = "Kannan, Kurakin, Goodfellow, 2018 (arXiv 1803.06373)"

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if self.cfg.noise < 0:
            raise ConfigError(f"method.noise is a standard deviation, >= 0; got {self.cfg.noise}")

    def perturb(self, model, x, y, threat):
        """The noisy training inputs (``x`` itself when ``noise`` is 0); not an attack."""
        if not self.cfg.noise:
            return x
        return (x + self.cfg.noise * torch.randn_like(x)).clamp(0, 1)

    def loss(self, p, y):
        logits = p.logits_adv if self.cfg.noise else p.logits  # the noisy pass only, when there is noise
        half = len(y) // 2
        loss_ce = ce(logits, y)
        pair = squared_logit_distance(logits[:half], logits[half:2 * half])
        loss = loss_ce + self.cfg.lam * pair
        return loss, {"loss_ce": loss_ce.detach(), "loss_pair": pair.detach(), "acc": accuracy(logits, y)}
