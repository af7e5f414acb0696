"""Projected gradient descent (Madry et al., ICLR 2018): the primitive every training and
evaluation attack is built on, and the evaluation attack ``pgd``.

Threat models: ``Linf`` (signed steps, clip to the eps-box), ``L2`` (normalized steps,
projection onto the eps-ball), both intersected with the image box [0, 1], and ``L1``: the sparse
step of SLIDE (Tramèr & Boneh, NeurIPS 2019) as Croce & Hein ("Mind the box: l1-APGD for sparse
adversarial attacks on image classifiers", ICML 2021) describe it for the effective threat model,
the L1 ball intersected with the box: the signed gradient on the top ``L1_SPARSITY`` share of the
coordinates that can still move in its direction (a pixel at 0 or 1 pushed outwards cannot),
scaled to L1 length ``step_size``, then the exact projection onto ball ∩ box
(:func:`project_l1_box`).

Losses: ``"ce"``, ``"cw"`` (margin), ``"kl"`` (TRADES: KL to the clean prediction, which is
computed once), or any callable ``(logits, y) -> (B,)`` to maximize. ``targeted=True``
reads ``y`` as target classes and descends towards them.

Under autocast, the first step from the ``"normal"`` start runs in fp32 (see :func:`_full_precision`).

Random start: ``"uniform"`` in the eps-ball, ``"normal"`` (``init_std`` * N(0, 1), TRADES and
MART use 0.001) or ``None``. With ``restarts > 1`` each sample keeps its strongest example:
a successful one first, then the one with the highest loss.

The gradient is taken with respect to the input only (``torch.autograd.grad``), which in eager
mode computes no weight gradients. On a compiled model (:mod:`advrep.compiling`) the
parameters are also frozen while the attack runs (the compiled backward would otherwise
compute their gradients) and their ``requires_grad`` flags restored afterwards; in eager they
are left alone, since frozen weights would defeat autocast's weight-cast cache (each step
would cast every weight to bf16 again). The
model's train/eval mode is left as the caller set it (methods choose eval-mode BatchNorm for
the attack, see ``attack_bn``).

Evaluation attack ``pgd``: PGD-k on the cross-entropy (settings in :class:`PGD`).

Example::

    x_adv = pgd(model, x, y, eps=8/255, step_size=2/255, steps=10)
    advrep eval RUN --eval.pgd_steps=50 --eval.pgd_restarts=5
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal, Optional

import torch
import torch.nn as nn

from ..compiling import is_compiled
from ..errors import ConfigError
from ..tensors import fp32
from ..threat import NORMS
from .losses import LossSpec, attack_loss
from .registry import Attack, need_positive, register_attack


@contextlib.contextmanager
def input_grad_only(model: nn.Module):
    """On a compiled model, freeze the parameters so its backward computes input gradients
    only, then restore; on an eager one, nothing (``autograd.grad`` already skips them)."""
    if not is_compiled(model):
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _full_precision(needed: bool, x: torch.Tensor):
    """Autocast off for the first step from the ``"normal"`` start. From ``x + 0.001·N(0, 1)`` the
    KL to the clean prediction (TRADES, SPAT, Adv-DPNP's option) differs from 0 by less than
    bf16's rounding of the feature maps, so a bf16 first step follows rounding noise (cosine to fp32's input gradient 0.1-0.35 on a small CNN; the
    head alone in fp32 does not fix it); from the second step on bf16's direction is fp32's
    (cosine 0.997). One fp32 step of ``steps`` (tests/test_fast_path.py)."""
    if needed and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


# L1: each step moves this share of the coordinates (at least one), the largest gradient entries
# among those the box lets move; SLIDE uses a high percentile of |gradient| the same way.
L1_SPARSITY = 0.05
_L1_BISECTION_STEPS = 60  # halvings of the threshold's bracket: far below float32's resolution


def project_l1_box(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each sample's ``delta`` onto ``{z : ‖z‖₁ ≤ eps, 0 ≤ x + z ≤ 1}``.

    The KKT conditions make it separable given one multiplier λ ≥ 0 per sample: each coordinate
    is the soft threshold ``sign(v)·max(|v| − λ, 0)`` clipped to the box's bound in its own
    direction (``1 − x`` upwards, ``x`` downwards); λ = 0 when that already fits the ball, else
    the root of ``Σ min(max(|v| − λ, 0), bound) = eps``, found by bisection (its upper end, so
    the result never leaves the ball)."""
    v, xf = delta.flatten(1), x.flatten(1)
    bound = torch.where(v > 0, 1 - xf, xf).clamp_min(0)
    a = v.abs()

    def mass(lam):
        return (a - lam).clamp_min(0).minimum(bound).sum(1, keepdim=True)

    lo = torch.zeros_like(a[:, :1])
    hi = a.amax(1, keepdim=True)
    inside = mass(lo) <= eps
    for _ in range(_L1_BISECTION_STEPS):
        mid = (lo + hi) / 2
        over = mass(mid) > eps
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    lam = torch.where(inside, torch.zeros_like(hi), hi)
    return (v.sign() * (a - lam).clamp_min(0).minimum(bound)).view_as(delta)


def l1_step(grad: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, sparsity: float = L1_SPARSITY) -> torch.Tensor:
    """The sparse L1 ascent direction (L1 length 1): sign of the gradient on its largest
    ``sparsity`` share of entries among the coordinates that can move in the gradient's
    direction inside the box, zero elsewhere."""
    g, now = grad.flatten(1), (x + delta).flatten(1)
    movable = ((g > 0) & (now < 1)) | ((g < 0) & (now > 0))
    score = g.abs() * movable
    k = max(1, math.ceil(sparsity * g.shape[1]))
    threshold = score.topk(k, dim=1).values[:, -1:]
    chosen = (score >= threshold) & (score > 0)
    direction = g.sign() * chosen
    return (direction / direction.abs().sum(1, keepdim=True).clamp_min(1)).view_as(grad)


def _project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "L1":
        return project_l1_box(delta, x, eps)
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0, 1) - x


def _random_start(x: torch.Tensor, eps: float, norm: str, kind: Optional[str], init_std: float):
    if kind is None or kind == "none":
        return torch.zeros_like(x)
    if kind == "normal":
        return init_std * torch.randn_like(x)
    if kind != "uniform":
        raise ConfigError(f"unknown random start '{kind}'; use uniform, normal or none")
    if norm == "Linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    if norm == "L1":
        # uniform in the L1 ball: d + 1 exponential draws, the first d over their sum, random signs
        e = torch.empty(x.shape[0], x[0].numel() + 1, device=x.device, dtype=x.dtype).exponential_()
        radius = (e[:, :-1] / e.sum(1, keepdim=True)).view_as(x)
        return eps * radius * (torch.randint_like(x, 0, 2) * 2 - 1)
    # uniform in the L2 ball: a random direction times a radius drawn as eps * U^(1/d)
    direction = torch.randn_like(x)
    d = x[0].numel()
    radius = eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction / _flat_norm(direction) * radius.view(-1, *([1] * (x.dim() - 1)))


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Literal["Linf", "L2", "L1"] = "Linf",
    loss: LossSpec = "ce",
    random_start: Optional[str] = "uniform",
    init_std: float = 0.001,
    targeted: bool = False,
    restarts: int = 1,
    clean_logits: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Return adversarial examples for ``x`` (same shape, inside the threat model)."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm '{norm}'; use one of: {', '.join(NORMS)}")
    x = x.detach()
    loss_fn = attack_loss(loss, targeted=targeted, model=model, x=x, clean_logits=clean_logits)
    best = best_loss = best_success = None
    with input_grad_only(model):
        for _ in range(restarts):
            delta = _project(_random_start(x, eps, norm, random_start, init_std), x, eps, norm)
            for i in range(steps):
                delta.requires_grad_(True)
                with _full_precision(i == 0 and random_start == "normal", x):
                    value = loss_fn(fp32(model(x + delta)), y).sum()
                    (grad,) = torch.autograd.grad(value, delta)
                if norm == "Linf":
                    step = grad.sign()
                elif norm == "L1":
                    step = l1_step(grad, x, delta.detach())
                else:
                    step = grad / _flat_norm(grad)
                delta = _project(delta.detach() + step_size * step, x, eps, norm)
            x_adv = x + delta.detach()
            if restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = fp32(model(x_adv))
                cur_loss = loss_fn(logits, y)
                pred = logits.argmax(1)
                cur_success = (pred == y) if targeted else (pred != y)
            if best is None:
                best, best_loss, best_success = x_adv, cur_loss, cur_success
                continue
            better = (cur_success & ~best_success) | ((cur_success == best_success) & (cur_loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_loss = torch.where(better, cur_loss, best_loss)
            best_success = best_success | cur_success
    return best


@register_attack("pgd")
class PGD(Attack):
    """PGD-k on the cross-entropy from a uniform start (Madry et al., ICLR 2018), the
    evaluation's main white-box attack: ``eval.pgd_steps`` steps of ``eval.pgd_step_size``
    (auto: PGD-20 at 2/255 for CIFAR-like data, PGD-40 at 0.01 for MNIST-like data, the step
    scaled with a non-default eps), ``eval.pgd_restarts`` restarts keeping each sample's
    strongest example."""

    title = "PGD"
    loss = "ce"
    steps_key = "pgd_steps"  # the eval setting that holds the step count (CW has its own)

    def label(self, ev) -> str:
        return f"PGD-{ev.pgd_steps}" + (f"×{ev.pgd_restarts}" if ev.pgd_restarts > 1 else "")

    def check(self, threat, ev) -> None:
        need_positive(f"eval.{self.steps_key}", getattr(ev, self.steps_key), integer=True)
        need_positive("eval.pgd_step_size", ev.pgd_step_size)
        need_positive("eval.pgd_restarts", ev.pgd_restarts, integer=True)

    def perturb(self, model, x, y, *, threat, ev, num_classes, device):
        return pgd(model, x, y, eps=threat.eps, norm=threat.norm, step_size=ev.pgd_step_size,
                   steps=getattr(ev, self.steps_key), restarts=ev.pgd_restarts, loss=self.loss,
                   random_start="uniform")
