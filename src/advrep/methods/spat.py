"""SPAT (Hou, Han, Li, "Improving Adversarial Robustness with Self-Paced Hard-Class Pair
Reweighting", AAAI 2023, arXiv 2210.15068), as in the authors' code: TRADES on a hypersphere
classifier whose losses weight each class pair by how hard it is.

Head ``cosine``: ``c_j = ĥ·ŵ_j + b_j`` (unit features, unit class rows, bias kept).
Self-paced accuracy loss on clean data, with modulated logits
``z_y = s·(1 + m − c_y)·c_y`` and ``z_j = s·(c_j + m)·c_j`` for ``j ≠ y``: ``L_acc = CE(z, y)``;
a non-target class close to the sample (a hard class pair) gets a larger factor ``c_j + m``.
Self-paced pair-consistency loss, with ``P = softmax(s·c)``, ``Q = softmax(s·c')`` and
``κ_ik = P_ik·(log P_ik − log Q_ik)``: ``L_rob = (1/B)·Σ_i Σ_k κ_ik·(κ_ik + n)``, which equals
``(1/B)·Σ_i (Σ_k κ_ik² + n·KL(P_i ‖ Q_i))``. Total ``L_acc + β·L_rob``.
Attack: PGD maximizing the per-sample ``L_rob`` from ``x + 0.001·N(0, 1)``, the clean side
computed once (eval-mode BatchNorm, as TRADES).

Defaults: β = 6, m = 0.2, n = 0.2, s = 8; threat model from the config (CIFAR: Linf 8/255,
step 2/255, 10 steps); WRN-34-10, 100 epochs, lr 0.1 in the paper.

``detach_factors`` (default false, as the code: gradient flows through the factors): true
stops the gradient through the self-paced factors, so they act as pure weights — the factors
``(1 + m − c_y)`` and ``(c_j + m)`` of ``L_acc`` (Circle-loss semantics) and, advrep's reading
for the second loss, the factor ``(κ + n)`` of ``L_rob``. The attack always maximizes the value
of ``L_rob`` with full gradient.

The scale: the method reads ``c = logits / s``, so the model must output ``s·c``. ``spat``
declares ``head_args() = {scale: s}``, which the config fills in when unset (a different scale
is an error):
the deployed model then outputs the logits SPAT trains on, and evaluation attacks see the
logits the model is used with, not cosines in [-1, 1] on which a cross-entropy PGD is weak.
A model built by hand with a cosine head of another scale is refused at the first step.

Read-outs (:mod:`.spat_readouts`): ``hard_pairs`` (the class pairs with the largest mean
non-target factor) and ``adv_confusion`` (the confusion matrix under attack, with a picture).

Example::

    advrep train --config configs/spat-mnist-small-cnn.yaml --method.beta=6 --method.s=8
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.heads import CosineHead
from ..tensors import fp32
from ..attacks.losses import clean_targets
from .base import Method, MethodConfig, accuracy, bn_mode
from .registry import register


@dataclass
class SpatConfig(MethodConfig):
    beta: float = 6.0
    m: float = 0.2
    n: float = 0.2
    s: float = 8.0
    detach_factors: bool = False


def modulated_logits(c: torch.Tensor, y: torch.Tensor, m: float, s: float,
                     detach_factors: bool = False) -> torch.Tensor:
    """``z_y = s·(1 + m − c_y)·c_y``, ``z_j = s·(c_j + m)·c_j`` (j ≠ y) from cosines ``c``."""
    target = F.one_hot(y, c.shape[1]).bool()
    factor = torch.where(target, 1 + m - c, c + m)
    if detach_factors:
        factor = factor.detach()
    return s * factor * c


def pair_consistency(c: torch.Tensor, c_adv: torch.Tensor, n: float, s: float,
                     detach_factors: bool = False) -> torch.Tensor:
    """Per-sample ``Σ_k κ_k·(κ_k + n)`` with ``κ = P·(log P − log Q)``, ``P = softmax(s·c)``,
    ``Q = softmax(s·c')``."""
    log_p, log_q = F.log_softmax(s * c, dim=1), F.log_softmax(s * c_adv, dim=1)
    kappa = log_p.exp() * (log_p - log_q)
    factor = kappa + n
    if detach_factors:
        factor = factor.detach()
    return (kappa * factor).sum(1)


@register("spat")
class Spat(Method):
    Config = SpatConfig
    head = "cosine"
    readouts = ("hard_pairs", "adv_confusion")
    formula = ("CE(z, y) with z_y = s(1+m−c_y)c_y, z_j = s(c_j+m)c_j, + β·(1/B)·Σ_i Σ_k κ_ik(κ_ik + n), "
               "κ = P(log P − log Q), P = softmax(s·c), Q = softmax(s·c'); cosine head, c = f/s; "
               "attack: PGD on Σ_k κ(κ + n) from x + 0.001·N(0,1)")
    source = "Hou, Han, Li, AAAI 2023 (arXiv 2210.15068), official code"

    def head_args(self) -> dict:
        return {"scale": self.cfg.s}  # the deployed model outputs s·c

    def check_model(self, model) -> None:
        scale = model.head_args.get("scale", self.cfg.s)
        if not isinstance(scale, (int, float)) or float(scale) != self.cfg.s:
            raise ConfigError(f"method 'spat' reads cosines as logits / s, so model.head_args.scale must equal "
                              f"method.s = {self.cfg.s}, got {scale!r}; drop model.head_args.scale or set "
                              f"--method.s={scale}")
        super().check_model(model)

    def _cosines(self, model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        head = getattr(model, "head", None)
        if isinstance(head, CosineHead) and head.scale != self.cfg.s:
            raise ConfigError(f"method 'spat' needs the cosine head's scale to equal method.s = {self.cfg.s}, "
                              f"got {head.scale}; build the model with scale={self.cfg.s}")
        return fp32(logits) / self.cfg.s

    def perturb(self, model, x, y, threat):
        c = self.cfg
        with bn_mode(model, c.attack_bn):
            clean = self._cosines(model, clean_targets(model, x))  # fp32, no gradients

        def objective(logits, _y):
            return pair_consistency(clean, self._cosines(model, logits), c.n, c.s)

        return self.attack(model, x, y, threat, loss=objective, random_start="normal")

    def loss(self, p, y):
        c = self.cfg
        cos, cos_adv = self._cosines(p.model, p.logits), self._cosines(p.model, p.logits_adv)
        loss_acc = F.cross_entropy(modulated_logits(cos, y, c.m, c.s, c.detach_factors), y)
        loss_rob = pair_consistency(cos, cos_adv, c.n, c.s, c.detach_factors).mean()
        loss = loss_acc + c.beta * loss_rob
        return loss, {"loss_acc": loss_acc.detach(), "loss_rob": loss_rob.detach(),
                      "acc": accuracy(p.logits, y), "acc_adv": accuracy(p.logits_adv, y)}
