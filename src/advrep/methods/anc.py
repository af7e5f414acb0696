"""Add-on term ``anc``: the asymmetric negative contrast of ANCRA (Zhou, Wang, Liu, Zhou, Gao,
"Improving Adversarial Robustness via Asymmetric Negative Contrast and Reverse Attention",
arXiv 2310.03358), as in the authors' code (TRADES-ANCRA).

- Negatives: for each anchor ``i`` one sample ``o(i)`` of the batch with another label:
  ``random`` draws a class present in the batch (≠ ``y_i``) uniformly, then a sample of it
  uniformly; the code's logits-based strategies pick, among other-label samples whose eval-mode
  prediction ``ŷ`` satisfies ``ŷ_j = ŷ_i`` (``soft``), ``ŷ_j = y_i`` (``hard``) or
  ``ŷ_j ∉ {y_i, ŷ_i}`` (``easy``), the one with the largest logit of class ``y_i``, falling back
  to ``random`` when none qualifies. The code starts them after 10 epochs of ``random``;
  ``random_steps`` gives that warm-up in training steps (advrep's reading: the term does not
  know the epoch; 10 CIFAR-10 epochs at batch 128 are 3,830 steps with the 1,000-image
  validation slice held out; the count restarts when a run is resumed).
- The negative is made adversarial by *targeted* PGD towards the anchor's label, in the base's
  threat model (eps/step/steps), from ``x_o + 0.001·N(0, 1)``, BatchNorm in ``attack_bn`` mode,
  and then forwarded in training mode (with its own label, on a model with reverse attention).
- Value, with ``v_i, c_i`` the top probability and class of the clean anchor's softmax and
  ``u_i, d_i`` those of the adversarial negative's:
  ``ANC = (1/B)·Σ_i 1[c_i = d_i]·sqrt(sg(v_i)·u_i)`` — the anchor side is frozen, only the
  negative moves (``alpha`` = 1; ``alpha`` < 1 adds ``(1 − alpha)·sqrt(v_i·sg(u_i))`` as the
  code's ``loss_fn`` does). An anchor whose batch holds no other label contributes 0.
- Weight ζ = 3 (6 for WRN-28-10 in the paper).

With reverse attention (``model.ra``, :mod:`advrep.models.ra`) ``Method.objective`` also adds
``cr ·`` the mean of the same value on each RA point's auxiliary logits (anchor and negative
alike), and, with ``attack_aux`` (default on, as the code's attacks do), every training attack
of the composition — the base's and the negative's — adds ``cr · mean_k loss(a_k)`` on the
auxiliary logits to its loss. RA's label selection is the test-time one in all of them.
``base_attack=ce`` (the default) replaces the base's own attack by the code's: PGD on CE from
``x + 0.001·N(0, 1)`` (the released TRADES-ANCRA trains with it, not with TRADES' KL attack,
which the authors define but do not use); ``base_attack=own`` keeps the base's attack.

Example::

    advrep train --config configs/trades+anc-mnist-small-cnn.yaml --terms.anc.strategy=hard
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..attacks.losses import kl_to
from ..errors import ConfigError
from ..models import ra
from ..tensors import fp32
from .base import Method, Term, TermConfig, bn_mode
from .registry import register_term


@dataclass
class AncConfig(TermConfig):
    weight: float = 3.0  # ζ
    strategy: Literal["random", "soft", "hard", "easy"] = "random"
    random_steps: int = 0  # training steps of random negatives before a logits-based strategy
    alpha: float = 1.0  # 1: asymmetric (anchor frozen)
    attack_aux: bool = True  # with RA: the training attacks add cr · mean_k loss(a_k)
    base_attack: Literal["own", "ce"] = "ce"  # ce: the code's CE-PGD in place of the base's attack


def _uniform_choice(mask: torch.Tensor) -> torch.Tensor:
    """Per row, a uniformly drawn column where ``mask`` is true (column 0 if none is)."""
    return torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0).argmax(1)


def pick_negatives(y: torch.Tensor, num_classes: int, strategy: str = "random",
                   logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, valid)``: the batch index of each anchor's negative, and whether the anchor has
    one (its batch holds another label). ``logits`` are the eval-mode logits of the batch, needed
    by the ``soft``, ``hard`` and ``easy`` strategies."""
    other = y[None, :] != y[:, None]  # [i, j]: sample j has another label than anchor i
    present = torch.zeros(num_classes, dtype=torch.bool, device=y.device).index_fill_(0, y, True)
    classes = present[None, :] & (torch.arange(num_classes, device=y.device)[None, :] != y[:, None])
    drawn = _uniform_choice(classes)
    index = _uniform_choice(y[None, :] == drawn[:, None])
    if strategy != "random":
        pred = logits.argmax(1)
        candidates = {"soft": pred[None, :] == pred[:, None],
                      "hard": pred[None, :] == y[:, None],
                      "easy": (pred[None, :] != y[:, None]) & (pred[None, :] != pred[:, None])}[strategy] & other
        score = logits[:, y].T  # [i, j] = logit of anchor i's class for sample j
        best = score.masked_fill(~candidates, float("-inf")).argmax(1)
        index = torch.where(candidates.any(1), best, index)
    return index, other.any(1)


def anc_value(anchor_logits: torch.Tensor, negative_logits: torch.Tensor, valid: Optional[torch.Tensor] = None,
              alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1/B)·Σ_i 1[c_i = d_i]·sqrt(sg(v_i)·u_i)`` (see the module docstring) and the fraction
    of anchors whose negative shares their top class (detached)."""
    v, c = F.softmax(fp32(anchor_logits), 1).max(1)
    u, d = F.softmax(fp32(negative_logits), 1).max(1)
    same = c == d if valid is None else (c == d) & valid

    def pair(fixed, moving):
        return torch.where(same, (fixed.detach() * moving).sqrt(), 0.0)

    value = pair(v, u)
    if alpha != 1:
        value = alpha * value + (1 - alpha) * pair(u, v)
    return value.sum() / len(v), same.float().mean().detach()


class Negatives(NamedTuple):
    valid: torch.Tensor
    logits: torch.Tensor
    aux: list  # the auxiliary (features, logits) per RA point, [] without RA


@register_term("anc")
class Anc(Term):
    Config = AncConfig
    formula = ("(1/B)·Σ_i 1[c_i = d_i]·sqrt(sg(v_i)·u_i), (v_i, c_i) top probability and class of p_i, (u_i, d_i) "
               "of softmax(f(x^o_i)); x^o_i: an other-class sample of the batch after targeted PGD towards y_i")
    source = "Zhou et al., ANCRA (arXiv 2310.03358), official code"

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.steps = 0
        self._negatives: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per step's passes

    def attach(self, base: Method) -> None:
        self.base = base

    def attack_hook(self, base: Method):
        """With ``attack_aux`` (on RA models): every attack loss gains ``cr · mean_k loss(a_k)``."""
        return self._ra_loss if self.cfg.attack_aux else None

    def perturb(self, base: Method, model, x, y, threat):
        """With ``base_attack=ce`` (default), the code's CE-PGD from ``x + 0.001·N(0, 1)``, not the base's attack."""
        if self.cfg.base_attack == "ce":
            return base.attack(model, x, y, threat, loss="ce", random_start="normal")
        return None

    def _ra_loss(self, model, x, spec, loss):
        if not ra.enabled(model):
            return loss
        if spec == "kl":  # TRADES: each auxiliary head against its own clean prediction
            with bn_mode(model, self.base.cfg.attack_bn), torch.no_grad():
                model(x)
            return ra.with_auxiliary(model, loss, [kl_to(a) for _, a in ra.auxiliary(model)])
        return ra.with_auxiliary(model, loss, [loss] * ra.state(model).points)

    def _negatives_of(self, p, y) -> Negatives:
        model, x = p.model, p.x
        strategy = self.cfg.strategy if self.steps >= self.cfg.random_steps else "random"
        self.steps += 1
        logits = None
        if strategy != "random":
            with bn_mode(model, self.base.cfg.attack_bn), torch.no_grad():
                logits = model(x)
        index, valid = pick_negatives(y, p.logits.shape[1], strategy, logits)
        if p.threat is None:
            raise ConfigError("term 'anc' attacks inside the loss: call objective(..., threat=threat)")
        x_neg = self.base.attack(model, x[index], y, p.threat, loss="ce", targeted=True, random_start="normal")
        with ra.labels(model, y[index]):  # training mode: RA weights by the negative's own label
            out = model.forward_features(x_neg)[1] if hasattr(model, "forward_features") else model(x_neg)
        return Negatives(valid, out, ra.auxiliary(model))

    def value(self, p, y):
        root = p.root
        if root not in self._negatives:
            self._negatives[root] = self._negatives_of(root, y)
        neg = self._negatives[root]
        negative = neg.logits if p.index is None else neg.aux[p.index][1]
        value, match = anc_value(p.logits, negative, neg.valid, self.cfg.alpha)
        return value, {"value": value.detach(), "match": match}
