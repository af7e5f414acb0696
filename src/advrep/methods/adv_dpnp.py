"""Adv-DPNP and DPNP (Zarei Sabzevar, Mohammadzadeh, Tavakoli, Harati, "Deep Positive-Negative
Prototypes for Adversarially Robust Discriminative Prototypical Learning", arXiv 2504.03782),
with the geometry read-out ``prototype_geometry``.

The paper gives the design, not the equations, and no code is released; the formulas below are
**advrep's reading** (METHODS.md, "Adv-DPNP"), every choice in it a config option.
With ``c_j = α·v_j/‖v_j‖`` the ``prototype`` head's rows (radius α, ``model.head_args``),
``C`` their matrix, ``C̄ = sg(C)``, ``h``/``h'`` clean/adversarial features of dimension ``d``:

- clean branch (reaches the backbone and the prototypes):
  ``L_ce = CE(h·Cᵀ, y)``, ``L_pos = mean_i ‖h_i − c_{y_i}‖² / d``,
  ``L_neg = mean_i cos(h_i, c_{n_i})`` with ``n_i = argmin_{j≠y_i} ‖h_i − c_j‖`` the nearest rival
  prototype (``neg: sample``), or ``mean_j cos(c_j, c_{n(j)})`` over each prototype's nearest
  rival prototype (``neg: prototype``);
- adversarial branch (prototypes detached, so they learn from clean data only):
  ``L_ce' = CE(h'·C̄ᵀ, y)``, ``L_pos' = mean_i ‖h'_i − c̄_{y_i}‖² / d``,
  ``L_cons = (1/B)·Σ_i KL(softmax(h_i·C̄ᵀ) ‖ softmax(h'_i·C̄ᵀ))``;
- total ``L_ce + L_ce' + λ_pos·(L_pos + L_pos') + λ_neg·L_neg + λ_cons·L_cons``;
- attack: PGD on ``CE(h'·C̄ᵀ, y)`` from a uniform start (``attack: ce``), or TRADES' KL attack
  from ``x + 0.001·N(0, 1)`` (``attack: kl``).

``dpnp`` is the same head and clean branch without adversarial examples.

Threat model: the config's ``threat`` section (Linf 8/255, step 2/255, 10 steps on CIFAR-like
data; 0.3, 0.01, 40 on MNIST-like). Defaults: λ_pos = 1 (``dpnp``: 0.1, not re-swept), λ_neg = 1,
λ_cons = 6, α = 1 (the head's default), settled by the MNIST sweeps in docs/adv-dpnp.md.

Example::

    advrep train --config configs/adv-dpnp-mnist-small-cnn.yaml --method.lambda_cons=6 \\
        --model.head_args="{alpha: 1}"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import ConfigError
from ..readouts import Probe, register_readout
from ..tensors import fp32
from ..attacks.losses import clean_targets
from .base import Method, MethodConfig, accuracy, bn_mode, ce, kl_batchmean
from .registry import register

SOURCE = "Zarei Sabzevar et al., 2025 (arXiv 2504.03782); formulas are advrep's reading (no released code)"


@dataclass
class DpnpConfig(MethodConfig):
    lambda_pos: float = 0.1
    lambda_neg: float = 1.0
    neg: Literal["sample", "prototype"] = "sample"  # advrep's reading of the negative prototype


@dataclass
class AdvDpnpConfig(DpnpConfig):
    lambda_pos: float = 1.0  # the pull of the CE's order; 0.1 barely acts (docs/results/adv-dpnp-aa-sweep.md)
    lambda_cons: float = 6.0
    attack: Literal["ce", "kl"] = "ce"


def class_vectors(head: torch.nn.Module) -> torch.Tensor:
    """The head's class vectors (K, d): the prototypes, or a plain head's weight rows (so the
    objective also runs on a model built by hand with another head)."""
    return head.prototypes() if hasattr(head, "prototypes") else head.weight


def detached_head(head: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Logits of ``h`` through ``head`` with every head parameter detached (``h·C̄ᵀ``)."""
    return functional_call(head, {k: v.detach() for k, v in head.named_parameters()}, (h,))


def nearest_rival(points: torch.Tensor, centres: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """For each row of ``points``, the index of the nearest row of ``centres`` other than ``own``."""
    dist2 = points.pow(2).sum(1, keepdim=True) - 2 * points @ centres.T + centres.pow(2).sum(1)
    return dist2.scatter(1, own[:, None], math.inf).argmin(1)


def positive(h: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i ‖h_i − c_{y_i}‖² / d``."""
    return (h - c[y]).pow(2).sum(1).mean() / h.shape[1]


def negative(h: torch.Tensor, c: torch.Tensor, y: torch.Tensor, mode: str) -> torch.Tensor:
    """Cosine to the nearest rival prototype, per sample (``sample``) or per prototype."""
    if mode == "sample":
        return F.cosine_similarity(h, c[nearest_rival(h.detach(), c.detach(), y)], dim=1).mean()
    own = torch.arange(len(c), device=c.device)
    return F.cosine_similarity(c, c[nearest_rival(c.detach(), c.detach(), own)], dim=1).mean()


@register("dpnp")
class Dpnp(Method):
    Config = DpnpConfig
    adversarial = False
    head = "prototype"
    readouts = ("prototype_geometry",)
    formula = ("CE(h·Cᵀ, y) + λ_pos·mean‖h − c_y‖²/d + λ_neg·mean cos(h, c_rival), prototypes c_j on a sphere "
               "of radius α (head `prototype`); no attack")
    source = SOURCE

    def __init__(self, **hparams):
        super().__init__(**hparams)
        for key in ("lambda_pos", "lambda_neg", "lambda_cons"):
            if getattr(self.cfg, key, 0.0) < 0:
                raise ConfigError(f"method.{key} must be >= 0 (0 switches the term off), got {getattr(self.cfg, key)}")

    def perturb(self, model, x, y, threat):
        return x

    def clean_branch(self, p, y):
        """``L_ce + λ_pos·L_pos + λ_neg·L_neg``: the only terms that reach the prototypes."""
        h, c = fp32(p.features), fp32(class_vectors(p.model.head))
        loss_ce, loss_pos, loss_neg = ce(p.logits, y), positive(h, c, y), negative(h, c, y, self.cfg.neg)
        loss = loss_ce + self.cfg.lambda_pos * loss_pos + self.cfg.lambda_neg * loss_neg
        return loss, {"loss_ce": loss_ce.detach(), "loss_pos": loss_pos.detach(), "loss_neg": loss_neg.detach(),
                      "acc": accuracy(p.logits, y)}

    def loss(self, p, y):
        return self.clean_branch(p, y)


@register("adv-dpnp")
class AdvDpnp(Dpnp):
    Config = AdvDpnpConfig
    adversarial = True
    formula = ("CE(h·Cᵀ, y) + CE(h'·C̄ᵀ, y) + λ_pos·(mean‖h − c_y‖² + mean‖h' − c̄_y‖²)/d + λ_neg·mean cos(h, c_rival) "
               "+ λ_cons·(1/B)·Σ_i KL(softmax(h_i·C̄ᵀ) ‖ softmax(h'_i·C̄ᵀ)), C̄ = sg(C): prototypes learn from clean data "
               "only; attack: PGD on CE(h'·Cᵀ, y) from a uniform start (attack=kl: TRADES' KL attack)")

    def perturb(self, model, x, y, threat):
        if self.cfg.attack == "kl":
            with bn_mode(model, self.cfg.attack_bn):
                clean_logits = clean_targets(model, x)  # fp32, no gradients
            return self.attack(model, x, y, threat, loss="kl", random_start="normal", clean_logits=clean_logits)
        return self.attack(model, x, y, threat, loss="ce", random_start="uniform")

    def adversarial_branch(self, p, y):
        """``L_ce' + λ_pos·L_pos' + λ_cons·L_cons`` on detached prototypes: the backbone only."""
        head = p.model.head
        c_bar = fp32(class_vectors(head)).detach()
        h_adv = fp32(p.features_adv)
        logits_adv = detached_head(head, p.features_adv)
        loss_ce = ce(logits_adv, y)
        loss_pos = positive(h_adv, c_bar, y)
        loss_cons = kl_batchmean(detached_head(head, p.features), logits_adv)
        loss = loss_ce + self.cfg.lambda_pos * loss_pos + self.cfg.lambda_cons * loss_cons
        return loss, {"loss_ce_adv": loss_ce.detach(), "loss_pos_adv": loss_pos.detach(),
                      "loss_cons": loss_cons.detach(), "acc_adv": accuracy(logits_adv, y)}

    def loss(self, p, y):
        clean, m_clean = self.clean_branch(p, y)
        adv, m_adv = self.adversarial_branch(p, y)
        return clean + adv, {**m_clean, **m_adv}


# ------------------------------------------------------------------------------ read-out


def geometry(h: torch.Tensor, y: torch.Tensor, c: torch.Tensor, present: torch.Tensor) -> dict:
    """Compactness and separation of features ``h`` around class vectors ``c`` (rows of absent
    classes, ``present`` False, are ignored)."""
    dist = torch.cdist(h, c).masked_fill(~present, math.inf)
    own = dist.gather(1, y[:, None]).squeeze(1)
    rival = dist.scatter(1, y[:, None], math.inf).amin(1)
    return {"intra": own.mean().item(), "margin": (rival - own).mean().item(),
            "margin_rel": ((rival - own) / (rival + own).clamp_min(1e-12)).mean().item()}


@register_readout("prototype_geometry")
def prototype_geometry(probe: Probe) -> dict:
    """The geometry Adv-DPNP argues with, on clean and PGD features:

    - ``intra``: mean ‖h − c_y‖ (compactness); ``intra_rel``: the same over the mean distance
      between class vectors (scale-free);
    - ``min_angle_deg``: the smallest angle between two class vectors (separation);
    - ``margin``: mean ‖h − c_rival‖ − ‖h − c_y‖ with ``c_rival`` the nearest other class
      vector; ``margin_rel``: the same over their sum, in [−1, 1] (scale-free).

    Class vectors: the head's prototypes if it has them (``prototype`` head), otherwise the
    class means of the clean features of the probe images, since a linear head's rows are
    directions of arbitrary scale rather than points of the feature space.
    """
    (h, _), (h_adv, _), y = probe.clean, probe.adv, probe.y
    head = probe.model.head
    k = head.weight.shape[0]
    if hasattr(head, "prototypes"):
        kind, present = "prototypes", torch.ones(k, dtype=torch.bool, device=h.device)
        with torch.no_grad():
            c = head.prototypes().float()
    else:
        kind = "class-means"
        counts = torch.bincount(y, minlength=k)
        present = counts > 0
        c = torch.zeros(k, h.shape[1], device=h.device).index_add_(0, y, h) / counts.clamp_min(1)[:, None]
    if int(present.sum()) < 2:
        raise ConfigError("prototype_geometry needs probe images of at least two classes")
    cp = c[present]
    cos = F.normalize(cp, dim=1) @ F.normalize(cp, dim=1).T
    off = ~torch.eye(len(cp), dtype=torch.bool, device=c.device)
    min_angle = math.degrees(math.acos(min(1.0, cos[off].max().item())))
    spread = torch.cdist(cp, cp)[off].mean().item()
    clean, adv = geometry(h, y, c, present), geometry(h_adv, y, c, present)
    return {"class_vectors": kind, "intra": clean["intra"], "intra_adv": adv["intra"],
            "intra_rel": clean["intra"] / spread, "intra_rel_adv": adv["intra"] / spread,
            "min_angle_deg": min_angle, "margin": clean["margin"], "margin_adv": adv["margin"],
            "margin_rel": clean["margin_rel"], "margin_rel_adv": adv["margin_rel"]}
