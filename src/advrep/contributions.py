"""Per-feature contributions at the penultimate layer and how concentrated they are.

For a model whose head is linear, ``f_y = Σ_k h_k·W_{y,k} + b_y``, so the contribution of
feature ``k`` to sample ``i`` is ``r_ik = h_ik·W_{y_i,k}``: the activation times the
classifier weight of the true class, which is also gradient × activation at the penultimate
layer. AALP (Wu, Sang, Xu, Zheng, Xu, arXiv 2005.11904) observes that robust models rely on
fewer high-contribution features; the read-out ``contribution_concentration`` measures that
for any run with a linear head: on average, how many features carry 50% and 90% of a
sample's positive contribution (advrep's reading of the paper's diagnostic).

Example::

    advrep eval runs/alp --eval.readouts=[contribution_concentration]
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError
from .readouts import Probe, register_readout

LEVELS = (0.5, 0.9)


def head_weight(model: nn.Module) -> torch.Tensor:
    """The (K, d) weight of ``model.head``; a ConfigError if the head is not linear, since
    the contributions are defined through an affine classifier."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"feature contributions need a linear head (model.head=linear), "
                          f"got {type(head).__name__}")
    return head.weight


def contributions(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``r_ik = h_ik·W_{y_i,k}`` (B, d), differentiable in ``h`` and ``weight``."""
    return h * weight[y]


def concentration(r: torch.Tensor, levels=LEVELS) -> dict[str, float]:
    """For each level q, the mean over samples of the fewest features whose largest positive
    contributions add up to at least q of the sample's total positive contribution.

    Samples with no positive contribution have no such count and are left out of the means;
    ``samples`` says how many were counted (a feature-less sample would otherwise count as 0).
    """
    pos = r.detach().double().clamp(min=0)
    total = pos.sum(1)
    counted = total > 0
    cumulative = pos.sort(1, descending=True).values.cumsum(1)[counted]
    total = total[counted]
    out = {}
    for q in levels:
        # 1e-9·total absorbs rounding in the cumulative sum, so a share reached exactly counts
        short = cumulative < (q * total - 1e-9 * total)[:, None]
        n = short.sum(1) + 1
        out[f"n{round(100 * q)}"] = n.double().mean().item() if len(n) else float("nan")
    out["samples"] = int(counted.sum())
    return out


@register_readout("contribution_concentration")
def contribution_concentration(probe: Probe) -> dict:
    """How many penultimate features carry 50% and 90% of the true class's positive
    contribution, on average over the clean and over the adversarial images (fewer: more
    concentrated); ``feature_dim`` for scale."""
    weight = head_weight(probe.model).detach().float()
    out: dict = {"feature_dim": weight.shape[1]}
    for side, (h, _) in (("clean", probe.clean), ("adv", probe.adv)):
        out.update({f"{side}_{k}": v for k, v in concentration(contributions(h, weight, probe.y)).items()})
    return out
