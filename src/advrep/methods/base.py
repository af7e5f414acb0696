"""The method contract: a dataclass of hyperparameters and two steps.

- ``perturb(model, x, y) -> x_adv``: the inner maximization, built from :mod:`advrep.attacks`;
- ``objective(model, x, x_adv, y) -> (loss, metrics)``: the outer loss, with ``metrics`` a
  dict of detached scalar tensors that the trainer averages once per epoch (no host syncs).

A method implements ``loss(passes, y)`` on :class:`Passes`, which runs the clean and the
adversarial forward pass at most once each, as separate passes (as the original
implementations do, so BatchNorm sees the same statistics), and shares them with the add-on
terms of a composition such as ``trades+lp`` (:class:`Term`, :mod:`.compose`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import attacks
from ..config import ModelConfig, build
from ..errors import ConfigError
from ..models import ra
from ..tensors import fp32

Metrics = dict[str, torch.Tensor]


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


class Passes:
    """The forward passes of one training step, each run at most once, on first use.

    ``clean`` and ``adv`` are ``(features, logits)``; a base objective and every add-on term
    read them here instead of running the network again.

    On a model with reverse attention (:mod:`advrep.models.ra`) the passes run with the labels
    ``y`` (training-mode RA weights by the true label), ``aux[name]`` keeps each pass's auxiliary
    ``(features, logits)`` per RA point, and :meth:`auxiliary` gives the passes as RA point ``k``'s
    auxiliary head sees them. ``root`` is the step's own passes (itself, or the parent of an
    auxiliary view) and ``index`` the RA point (None for the step's own passes).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor | None = None):
        self.model, self.x, self.x_adv, self.y = model, x, x_adv, y
        self.aux: dict[str, list] = {}
        self.root, self.index = self, None

    def _run(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not hasattr(self.model, "forward_features"):
            return None, self.model(x)  # a plain nn.Module: logits only
        with ra.labels(self.model, self.y):
            out = self.model.forward_features(x)
        self.aux[name] = ra.auxiliary(self.model)
        return out

    @cached_property
    def clean(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return self._run(self.x, "clean")

    @cached_property
    def adv(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return self._run(self.x_adv, "adv")

    def auxiliary(self, k: int) -> "Passes":
        return _AuxiliaryPasses(self, k)

    @property
    def logits(self) -> torch.Tensor:
        return self.clean[1]

    @property
    def logits_adv(self) -> torch.Tensor:
        return self.adv[1]

    @property
    def features(self) -> torch.Tensor:
        return self._need_features(self.clean[0])

    @property
    def features_adv(self) -> torch.Tensor:
        return self._need_features(self.adv[0])

    def _need_features(self, h):
        if h is None:
            raise ConfigError("this method needs penultimate features: the model must offer "
                              "forward_features(x) -> (features, logits), as advrep's models do")
        return h


class _AuxiliaryPasses(Passes):
    """RA point ``k``'s view of the step's passes: its auxiliary head's features and logits
    (the parent's forward runs, once, when first read)."""

    def __init__(self, parent: Passes, k: int):
        super().__init__(parent.model, parent.x, parent.x_adv, parent.y)
        self.root, self.index = parent, k

    @cached_property
    def clean(self):
        _ = self.root.clean  # the parent's pass records its auxiliary heads
        return self.root.aux["clean"][self.index]

    @cached_property
    def adv(self):
        _ = self.root.adv
        return self.root.aux["adv"][self.index]


class Method:
    """Base class. Subclasses set ``Config`` and implement ``perturb`` and ``loss``.

    Class attributes document the method for users (``advrep list methods``, docs/methods.md):
    ``formula`` (one line), ``source`` (paper) and ``defaults_note`` (what the defaults follow).
    """

    name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    adversarial: ClassVar[bool] = True  # False: perturb returns x unchanged
    base: ClassVar[bool] = False  # True: accepts add-on terms (``trades+lp``)
    head: ClassVar[str | None] = None  # the model head this method needs, if any
    readouts: ClassVar[tuple[str, ...]] = ()  # read-outs (advrep.readouts) logged per epoch and reported
    formula: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, **hparams):
        self.cfg = build(self.Config, hparams, "method")

    def hparams(self) -> dict:
        return asdict(self.cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def check_model(self, model: ModelConfig) -> None:
        """Raise ConfigError at start-up if the configured model cannot run this method."""
        if self.head and model.head not in (None, self.head):  # None: auto, resolved to self.head
            raise ConfigError(f"method '{self.name}' needs model.head={self.head}, got '{model.head}'")

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """PGD in the method's threat model with the method's BatchNorm mode."""
        c = self.cfg
        with bn_mode(model, c.attack_bn):
            return attacks.pgd(model, x, y, **{"eps": c.eps, "step_size": c.step_size, "steps": c.steps,
                                               "norm": c.norm, **kwargs})

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, p: Passes, y: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def objective(self, model, x, x_adv, y) -> tuple[torch.Tensor, Metrics]:
        passes = Passes(model, x, x_adv, y)
        loss, metrics = self.loss(passes, y)
        attention = ra.state(model)
        if attention is not None:  # ANCRA: cr · the same loss on each RA point's auxiliary logits, averaged
            aux = sum(self.loss(passes.auxiliary(k), y)[0] for k in range(attention.points)) / attention.points
            loss = loss + attention.weight * aux
            metrics["loss_ra"] = aux.detach()
        return loss, metrics


@dataclass
class TermConfig:
    weight: float = 1.0


class Term:
    """An add-on regularizer: ``weight · value(passes, y)`` added to a base objective's loss.

    Subclasses set ``Config`` (with the paper's ``weight`` default) and implement ``value``,
    which returns ``(loss, metrics)`` from the passes the base already ran.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = TermConfig
    head: ClassVar[str | None] = None
    readouts: ClassVar[tuple[str, ...]] = ()
    formula: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, **hparams):
        self.cfg = build(self.Config, hparams, f"terms.{self.name}")

    def hparams(self) -> dict:
        return asdict(self.cfg)

    def check_model(self, model: ModelConfig) -> None:
        if self.head and model.head not in (None, self.head):
            raise ConfigError(f"term '{self.name}' needs model.head={self.head}, got '{model.head}'")

    def attach(self, base: Method) -> None:
        """Called once by the composition with its base method, for terms whose defaults
        depend on the base (for example a clean cross-entropy only where the base lacks one)."""

    def value(self, p: Passes, y: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


# ----------------------------------------------------------------------- loss pieces


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean().detach()


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in (at least) fp32, whatever precision the logits came in."""
    return F.cross_entropy(fp32(logits), y)


def kl_batchmean(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``(1/B)·Σ_i KL(p_i || q_i)`` with gradient through both sides, as TRADES writes it."""
    return F.kl_div(F.log_softmax(fp32(q_logits), 1), F.softmax(fp32(p_logits), 1),
                    reduction="sum") / p_logits.shape[0]


def squared_logit_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_{i,k} (a_ik − b_ik)²``: the logit-pairing distance of ALP and CLP."""
    return (fp32(a) - fp32(b)).pow(2).mean()
