"""An exponential moving average of a model's weights (``--train.ema=DECAY``).

After every optimizer step ``ema = d·ema + (1 − d)·w`` for every parameter ``w``, with ``d`` the
decay, or with ``train.ema_warmup`` the warmed-up decay ``min(decay, (1 + t)/(10 + t))``, ``t`` the
number of optimizer steps taken so far, this one included (1 at the first). This is Gowal et al.
2020's weight averaging as the PyTorch reproduction of Gowal et al./Rebuffi et al. writes it.

**BatchNorm buffers are copied, not averaged**: the EMA network runs with the raw network's
current running mean, variance and batch count, as in that reproduction. The average
therefore holds parameters only; :meth:`WeightEMA.state_dict` is a full state dict (the EMA
parameters plus the raw model's buffers) and :meth:`WeightEMA.swapped` puts the EMA
parameters into the model itself for a block (validation), then restores the raw ones
exactly. Working in the model itself (no copy of the network) keeps ``torch.compile``, DDP,
reverse-attention hooks and networks of one's own working unchanged.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .errors import CheckpointError


def decay_at(decay: float, step: int, warmup: bool) -> float:
    """The decay used by update number ``step`` (1 for the first optimizer step)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class WeightEMA:
    """The EMA parameters of ``model`` (see the module docstring); starts equal to its weights."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p.detach().clone() for _, p in model.named_parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """``ema = d·ema + (1 − d)·w`` after optimizer step number ``step`` (1, 2, ...)."""
        d = decay_at(self.decay, step, self.warmup)
        weights = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(self.params, d)
        torch._foreach_add_(self.params, weights, alpha=1 - d)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The EMA network's state dict: ``model``'s, with the EMA values for its parameters
        (the buffers are the model's own: copied, see the module docstring)."""
        ema = dict(zip(self.names, self.params))
        return {k: ema.get(k, v) for k, v in model.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Take the EMA parameters from a state dict :meth:`state_dict` wrote."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise CheckpointError(f"the checkpoint's EMA weights lack {len(missing)} parameters (e.g. {missing[0]})")
        for name, p in zip(self.names, self.params):
            p.copy_(state[name])

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """Run the block with the EMA parameters in ``model``; the raw ones come back exactly."""
        params = list(model.parameters())
        with torch.no_grad():
            raw = [p.detach().clone() for p in params]
            for p, e in zip(params, self.params):
                p.copy_(e)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)
