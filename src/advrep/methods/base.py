"""The method contract: a dataclass of hyperparameters and two steps.

- ``perturb(model, x, y) -> x_adv``: the inner maximization, built from :mod:`advrep.attacks`;
- ``objective(model, x, x_adv, y) -> (loss, metrics)``: the outer loss, with ``metrics`` a
  dict of detached scalar tensors that the trainer averages once per epoch (no host syncs).

Objectives run the clean and adversarial batches as separate forward passes, as the
original implementations do, so BatchNorm sees the same statistics they did.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import attacks
from ..config import build


@dataclass
class MethodConfig:
    """Fields every method has: the training threat model (filled from the config's
    ``threat`` section) and how BatchNorm behaves while the attack runs."""

    norm: Literal["Linf", "L2"] = "Linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    attack_bn: Literal["eval", "train"] = "eval"


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str):
    """Run the attack with BatchNorm (and dropout) in ``mode``; restore the caller's mode."""
    was_training = model.training
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


class Method:
    name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    adversarial: ClassVar[bool] = True  # False: perturb returns x unchanged
    head: ClassVar[str | None] = None  # the model head this method needs, if any

    def __init__(self, **hparams):
        self.cfg = build(self.Config, hparams, "method")

    def hparams(self) -> dict:
        return asdict(self.cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """PGD in the method's threat model with the method's BatchNorm mode."""
        c = self.cfg
        with bn_mode(model, c.attack_bn):
            return attacks.pgd(model, x, y, eps=c.eps, step_size=c.step_size, steps=c.steps,
                               norm=c.norm, **kwargs)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, model, x, x_adv, y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean().detach()


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in fp32, whatever precision the logits came in."""
    return F.cross_entropy(logits.float(), y)


def kl_batchmean(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``(1/B)·Σ_i KL(p_i || q_i)`` with gradient through both sides, as TRADES writes it."""
    return F.kl_div(F.log_softmax(q_logits.float(), 1), F.softmax(p_logits.float(), 1),
                    reduction="sum") / p_logits.shape[0]
