"""Add-on term ``adr``: Adversary Divergence Reduction (Bui, Le, Zhao, Montague, deVel, Abraham,
Phung, "Improving Adversarial Robustness by Enforcing Local and Global Compactness", ECCV 2020,
arXiv 2007.05123), as in the authors' code.

On the features ``h``, ``h'`` of ``layer`` with ``d(a, b) = mean_k |a_k − b_k|``:

- local compactness ``L_lc = mean_i d(sg(h_i), h'_i)``;
- global compactness ``L_gc = (1/B²)·Σ_{i,j} ω_ij·d(sg(h_j), h'_i)``, ``ω_ij = 1`` for a pair of the
  same class and ``omega_other`` (−1/99, the code's label scale 0.99) otherwise, so a batch of one
  class has only ``ω = 1`` pairs;
- smoothness ``L_smt = mean_i CE(sg(p_i), f'_i)`` and conditional entropy ``L_ent = mean_i H(p'_i)``
  (full gradient), the clustering assumption;
- global smoothness ``L_gs = (1/B²)·Σ_{i,j} ω_ij·CE(sg(p_j), f'_i)``, weight 0 by default
  (computed only when its weight is not 0);
- the clean cross-entropy ``CE(f, y)`` of ADR-PGD: ``clean_ce=auto`` adds it when the base has
  none (``pgd-at``, ``mart``) and not when it has one (``trades``, ``alp``); ``true``/``false``
  force it.

Which features: ``layer=auto`` (default) compares the penultimate features where no dropout
precedes them (ResNet, WRN: the authors' 512/640-d features) and otherwise the network's last
output before any dropout (the model's ``pre_dropout_path``: small-cnn's convolutional features,
1,024-d on MNIST, as the authors' port compares them; its 200-d penultimate features come after
``Dropout(0.5)``, whose two masks keep ``L_lc`` at ~0.13 even at ``x' = x``).
``layer=penultimate`` forces the penultimate features, a module path names another layer
(flattened per sample). The smoothness and entropy parts always read the logits. On the small
CNN's unnormalized convolutional maps the paper's ``lc_weight = gc_weight = 1`` diverges (the maps
grow until the network dies, in the authors' port too): its MNIST recipes use 0.1 (docs/adr.md).

Value: ``lc·L_lc + gc·L_gc + smt·L_smt + ent·L_ent + gs·L_gs [+ CE(f, y)]``, all part weights 1
except ``gs = 0``; the term's ``weight`` (1) scales the whole value, the clean CE included. So
``pgd-at+adr`` is the paper's ADR-PGD, ``CE(f, y) + CE(f', y) + L_lc + L_smt + L_ent + L_gc``
(the TensorFlow original halves both CE terms), and ``trades+adr`` is ADR-TRADES. Threat model:
the base's (Linf, eps 8/255, step 2/255, 10 steps on CIFAR-10). The term reads the passes the
base already ran; every run of it logs the ``stage_divergence`` read-out (:mod:`.adr_readouts`).

Example::

    advrep train --config configs/pgd-at+adr-mnist-small-cnn.yaml --terms.adr.gs_weight=1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tensors import fp32
from .base import Method, Term, TermConfig, ce
from .registry import register_term

# Bases whose loss already holds CE(f, y) on the clean logits (trades: CE(f, y); alp: ½·CE(f, y)).
BASES_WITH_CLEAN_CE = frozenset({"trades", "alp"})


@dataclass
class AdrConfig(TermConfig):
    lc_weight: float = 1.0  # local compactness
    gc_weight: float = 1.0  # global compactness
    smt_weight: float = 1.0  # smoothness
    ent_weight: float = 1.0  # conditional entropy
    gs_weight: float = 0.0  # global smoothness
    omega_other: float = -1 / 99  # pair weight of two samples of different classes
    clean_ce: Union[Literal["auto"], bool] = "auto"  # add CE(f, y); auto: when the base lacks one
    # the features L_lc and L_gc compare: auto (the last output before any dropout), penultimate, or a module path
    layer: str = "auto"


def mean_abs_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d(a_i, b_i) = mean_k |a_ik − b_ik|`` per row."""
    return (a - b).abs().mean(1)


def pairwise_mean_abs_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = mean_k |a_ik − b_jk|`` (cdist avoids the B×B×K difference tensor)."""
    return torch.cdist(a, b, p=1) / a.shape[1]


def pair_weights(y: torch.Tensor, omega_other: float) -> torch.Tensor:
    """``ω[i, j] = 1`` where ``y_i = y_j``, else ``omega_other``."""
    same = y[:, None] == y[None, :]
    return torch.where(same, 1.0, omega_other)


def soft_cross_entropy(target_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``−Σ_k P_k log Q_k`` per row."""
    return -(target_probs * log_probs).sum(1)


@register_term("adr")
class Adr(Term):
    Config = AdrConfig
    readouts = ("stage_divergence",)
    formula = ("lc·L_lc + gc·L_gc + smt·L_smt + ent·L_ent + gs·L_gs with d(a, b) = mean_k abs(a_k − b_k) on the "
               "features h of layer (auto: the last before any dropout): L_lc = mean_i d(sg(h_i), h'_i), "
               "L_gc = (1/B²)·Σ_ij ω_ij·d(sg(h_j), h'_i) "
               "(ω = 1 same class, else omega_other), L_smt = mean_i CE(sg(p_i), f'_i), L_ent = mean_i H(p'_i), "
               "L_gs = (1/B²)·Σ_ij ω_ij·CE(sg(p_j), f'_i); + CE(f, y) where the base has none (clean_ce=auto)")
    source = "Bui et al., ECCV 2020 (arXiv 2007.05123), official code"

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if not self.cfg.layer.strip():
            raise ConfigError("terms.adr.layer must be auto, penultimate or a module path of the model, got ''")
        self.adds_clean_ce = self.cfg.clean_ce is True  # `auto` is settled by attach()

    def layer_of(self, model) -> str | None:
        """The module path whose output ``L_lc`` and ``L_gc`` compare; None: the penultimate features."""
        if self.cfg.layer == "penultimate":
            return None
        if self.cfg.layer == "auto":
            return getattr(model, "pre_dropout_path", None)
        return self.cfg.layer

    def taps(self, model):
        path = self.layer_of(model)
        return (path,) if path else ()

    def attach(self, base: Method) -> None:
        if self.cfg.clean_ce == "auto":
            self.adds_clean_ce = base.name not in BASES_WITH_CLEAN_CE

    def value(self, p, y):
        c = self.cfg
        path = self.layer_of(p.model)
        if path is None:
            h, h_adv = fp32(p.features), fp32(p.features_adv)
        else:
            h, h_adv = fp32(p.tap(path)), fp32(p.tap(path, adv=True))
        logits, logits_adv = fp32(p.logits), fp32(p.logits_adv)
        probs = F.softmax(logits, 1).detach()
        log_probs_adv = F.log_softmax(logits_adv, 1)
        omega = pair_weights(y, c.omega_other).to(h.dtype)

        parts = {
            "lc": mean_abs_distance(h.detach(), h_adv).mean(),
            "gc": (omega * pairwise_mean_abs_distance(h_adv, h.detach())).mean(),
            "smt": soft_cross_entropy(probs, log_probs_adv).mean(),
            "ent": soft_cross_entropy(log_probs_adv.exp(), log_probs_adv).mean(),
        }
        weights = {"lc": c.lc_weight, "gc": c.gc_weight, "smt": c.smt_weight, "ent": c.ent_weight}
        if c.gs_weight != 0:
            # [i, j] = CE(sg(p_j), f'_i) = −Σ_k p_jk log p'_ik
            parts["gs"] = (omega * -(log_probs_adv @ probs.T)).mean()
            weights["gs"] = c.gs_weight
        if self.adds_clean_ce:
            parts["clean_ce"] = ce(logits, y)
            weights["clean_ce"] = 1.0
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}
