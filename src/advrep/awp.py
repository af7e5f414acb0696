"""Adversarial weight perturbation (Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust
Generalization", NeurIPS 2020), as the authors' code runs it (``--train.awp_gamma``).

Per training step, after the inner maximization gave ``x_adv``:

1. a proxy of the network (the same weights and BatchNorm state, in train mode) takes one SGD
   step of learning rate :data:`PROXY_LR` that *maximizes* the method's own loss on the batch
   (the authors do exactly that with CE for PGD-AT and with TRADES' loss for TRADES; here it is
   ``method.objective``, so every adversarial method and every ``base+term`` composition gets it);
2. for each weight of dimension > 1 (parameters named ``*weight*``: convolution and linear
   weights, not biases or BatchNorm's scales), the proxy's change ``Δw`` becomes
   ``v = ‖w‖/(‖Δw‖ + 1e-20)·Δw`` (layer by layer);
3. the network's weights become ``w + γ·v``; the method's loss and its gradient are computed
   there; the optimizer steps; then ``γ·v`` is subtracted again. As in the authors' training
   loops (``AT_AWP/train_cifar10.py``, ``trades_AWP/train_trades_cifar.py``) the perturbation is
   removed *after* the optimizer step, so weight decay acts on the perturbed weights.

The proxy step runs on the network itself instead of on a second copy: its BatchNorm buffers
are saved before and restored after, so, as with the authors' separate proxy, the network's
running statistics see only the training pass. The gradient is taken with
``torch.autograd.grad`` and never touches ``.grad``. Under torchrun the proxy's gradient is
averaged over the ranks, so every rank applies the same perturbation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

PROXY_LR = 0.01  # the proxy's SGD step; the layer-wise rescaling makes v independent of it (but for EPS)
EPS = 1e-20


def perturbed_names(model: nn.Module) -> list[str]:
    """The parameters AWP perturbs: weights of dimension > 1."""
    return [name for name, p in model.named_parameters() if p.dim() > 1 and "weight" in name]


def perturbation(model: nn.Module, loss: Callable[[], torch.Tensor], names: list[str],
                 lr: float = PROXY_LR, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """``{name: v}``, the rescaled ascent direction of each weight in ``names`` (steps 1 and 2 of
    the module docstring); ``loss()`` computes the method's loss with ``model`` in train mode.
    ``model``'s parameters, gradients, buffers and mode are as they were afterwards.
    ``reduce``: averages a gradient over processes (torchrun)."""
    params = dict(model.named_parameters())
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        objective = -loss()  # the proxy minimizes the negated loss: one ascent step on the loss
        grads = torch.autograd.grad(objective, [params[n] for n in names], allow_unused=True)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, saved in buffers:  # the proxy's BatchNorm statistics are not the network's
                b.copy_(saved)
    out = {}
    with torch.no_grad():
        for name, g in zip(names, grads):
            if g is None:  # a weight the loss does not reach: its proxy step is zero, so is v
                continue
            if reduce is not None:
                g = reduce(g)
            w = params[name].detach()
            proxy = w.add(g.to(w.dtype), alpha=-lr)  # the proxy's SGD step
            diff = proxy - w
            out[name] = w.norm() / (diff.norm() + EPS) * diff
    return out


@torch.no_grad()
def add(model: nn.Module, v: dict[str, torch.Tensor], coeff: float) -> None:
    """``w += coeff·v`` for every weight ``v`` names (``coeff`` = γ to perturb, −γ to restore)."""
    for name, p in model.named_parameters():
        if name in v:
            p.add_(coeff * v[name])
