"""AALP, adaptive adversarial logit pairing with guided dropout (Wu, Sang, Xu, Zheng, Xu,
"Towards Understanding and Improving the Adversarial Logit Pairing", arXiv 2005.11904,
ACM TOMM 2024).

The paper gives the ideas but no formulas and no code, so everything below beyond ALP is
**advrep's reading** (METHODS.md, [recon]), and every choice is an option:

- Contributions ``r_ik = h_ik·W_{y_i,k}`` of the penultimate features to the true class
  (:mod:`advrep.contributions`).
- Guided dropout, training only, on the clean and on the adversarial pass of the loss
  (logits ``head(mask ⊙ h · scale)``, each pass masked by its own contributions), ranked by the
  contributions to the class the pass's own undropped logits predict, so the mask never reads
  ``y`` (advrep's departure from METHODS.md). METHODS.md's literal reading, the contributions to
  the true class, is not offered: a mask chosen knowing ``y`` carries the label into the
  training logits, and an untrained network then scores 100% training accuracy through the mask
  alone (docs/aalp.md; a test keeps the mask label-free).
  ``keep=top-fraction`` keeps the round(ρ·d) features with the largest contribution per
  sample (ties: the lower feature index wins) and rescales them by 1/ρ;
  ``keep=threshold`` keeps the features with ``r_ik ≥ threshold`` and rescales them by
  d / (number kept), as inverted dropout does. In eval mode the logits are the model's own.
- Sample weights for the pairing term, never differentiated: ``weighting=prob`` gives
  ``w_i = sg(p'_{i,y_i})^γ``; ``binary`` gives 1 where the adversarial example is classified
  correctly, else 0; ``ratio`` gives ``min(1, c_i / (λ·d_i))``, the per-sample classification
  loss ``c_i = ½·CE_i + ½·CE'_i`` over the unweighted pairing loss ``λ·d_i``, so the pairing
  term never outweighs the classification loss of its sample.
- Loss ``½·CE(f, y) + ½·CE(f', y) + λ·(1/B)·Σ_i w_i·d_i`` with ``d_i = mean_k(f_ik − f'_ik)²``.

Attack: ALP's (PGD on ``CE(f', y)`` from a uniform start; ``attack_target=least-likely``).
Defaults: ρ = 0.5, keep=top-fraction, weighting=prob, γ = 1, λ = 0.5; threat
model as for pgd-at; needs the linear head. Logs the read-out ``contribution_concentration``.

Example::

    advrep train --config configs/aalp-mnist-small-cnn.yaml --method.rho=0.5 --method.weighting=binary
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..contributions import contributions, head_weight
from ..errors import ConfigError
from ..tensors import fp32
from .alp import Alp, AlpConfig
from .base import accuracy
from .registry import register


@dataclass
class AalpConfig(AlpConfig):
    keep: Literal["top-fraction", "threshold"] = "top-fraction"
    rho: float = 0.5
    threshold: float = 0.0
    weighting: Literal["prob", "binary", "ratio"] = "prob"
    gamma: float = 1.0


def keep_mask(r: torch.Tensor, keep: str, rho: float, threshold: float) -> torch.Tensor:
    """Boolean (B, d): the features guided dropout keeps, given contributions ``r``."""
    if keep == "threshold":
        return r >= threshold
    k = max(1, int(rho * r.shape[1] + 0.5))  # round half up; at least one feature
    # stable sort: among equal contributions the lower index comes first, so ties are
    # deterministic (the zero-initialized head of small-cnn makes every r equal at first)
    order = r.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(r, dtype=torch.bool).scatter_(1, order, True)


def guided_dropout(h: torch.Tensor, r: torch.Tensor, keep: str, rho: float, threshold: float):
    """``(mask ⊙ h · scale, mask)``: the kept features, rescaled so their expected total
    matches the undropped one (1/ρ for top-fraction, d/kept per sample for threshold)."""
    mask = keep_mask(r, keep, rho, threshold)
    if keep == "threshold":
        scale = r.shape[1] / mask.sum(1, keepdim=True).clamp(min=1)
    else:
        scale = 1 / rho
    return h * (mask * scale).to(h.dtype), mask


@register("aalp")
class Aalp(Alp):
    Config = AalpConfig
    base = False  # terms would read the undropped logits, not the ones this loss uses
    head = "linear"
    # Guided dropout calls the head on the dropped features outside the passes, where reverse
    # attention would select its rows by the auxiliary argmax instead of the label: refused.
    supports_ra = False
    readouts = ("contribution_concentration",)
    formula = ("½·CE(f, y) + ½·CE(f', y) + λ·(1/B)·Σ_i w_i·mean_k(f_ik − f'_ik)², w_i = sg(p'_{i,y_i})^γ, "
               "f, f' from guided dropout (training only: keep the top-ρ features by h_ik·W_{ŷ_i,k}, "
               "ŷ_i the pass's prediction, ×1/ρ); "
               "attack: as alp; advrep's reading")
    source = "Wu, Sang, Xu, Zheng, Xu, ACM TOMM 2024 (arXiv 2005.11904); no code released"

    def __init__(self, **hparams):
        super().__init__(**hparams)
        c = self.cfg
        if not 0 < c.rho <= 1:
            raise ConfigError(f"method.rho is the fraction of features kept, in (0, 1]; got {c.rho}")
        if c.gamma < 0:
            raise ConfigError(f"method.gamma must be non-negative, got {c.gamma}")

    def _logits(self, p, y, adv: bool):
        """The logits the loss uses and the kept fraction: guided dropout in training mode."""
        model = p.model
        logits = p.logits_adv if adv else p.logits
        if not model.training:
            return logits, torch.ones((), device=logits.device)
        h = p.features_adv if adv else p.features
        guide = logits.detach().argmax(1)  # the pass's own prediction, never the label
        r = contributions(fp32(h).detach(), fp32(head_weight(model)).detach(), guide)
        dropped, mask = guided_dropout(h, r, self.cfg.keep, self.cfg.rho, self.cfg.threshold)
        return model.head(dropped), mask.float().mean().detach()

    def weights(self, logits_adv, y, cls_i, pair_i):
        """Per-sample pairing weights ``w_i``, detached."""
        c = self.cfg
        with torch.no_grad():
            if c.weighting == "prob":
                return F.softmax(fp32(logits_adv), 1).gather(1, y[:, None]).squeeze(1).pow(c.gamma)
            if c.weighting == "binary":
                return (logits_adv.argmax(1) == y).to(cls_i.dtype)
            return (cls_i / (c.lam * pair_i).clamp(min=1e-12)).clamp(max=1)

    def loss(self, p, y):
        f, kept = self._logits(p, y, adv=False)
        f_adv, kept_adv = self._logits(p, y, adv=True)
        ce_i = F.cross_entropy(fp32(f), y, reduction="none")
        ce_adv_i = F.cross_entropy(fp32(f_adv), y, reduction="none")
        pair_i = (fp32(f) - fp32(f_adv)).pow(2).mean(1)
        w = self.weights(f_adv, y, 0.5 * ce_i + 0.5 * ce_adv_i, pair_i)
        pair = (w * pair_i).mean()
        loss = 0.5 * ce_i.mean() + 0.5 * ce_adv_i.mean() + self.cfg.lam * pair
        return loss, {"loss_ce": ce_i.mean().detach(), "loss_ce_adv": ce_adv_i.mean().detach(),
                      "loss_pair": pair.detach(), "weight": w.mean(), "kept": kept, "kept_adv": kept_adv,
                      "acc": accuracy(f, y), "acc_adv": accuracy(f_adv, y)}
