"""The method contract: a dataclass of hyperparameters and two steps.

- ``perturb(model, x, y, threat) -> x_adv``: the inner maximization in the threat model
  ``threat`` (:class:`advrep.threat.Threat`, one frozen value the caller owns), built from
  :mod:`advrep.attacks`;
- ``objective(model, x, x_adv, y, threat=None) -> (loss, metrics)``: the outer loss, with
  ``metrics`` a dict of detached scalar tensors that the trainer averages once per epoch (no
  host syncs); ``threat`` is read only by terms that attack inside the loss (``anc``).

What a method needs of the model it declares, and the config applies: ``head`` (the head it
trains), :meth:`Method.head_args` (head options it fixes, e.g. SPAT's scale) and
``supports_ra`` (whether it may run on a model with reverse attention).

A method implements ``loss(passes, y)`` on :class:`Passes`, which runs the clean and the
adversarial forward pass at most once each, as separate passes (so BatchNorm normalizes each
batch by its own statistics, as the original implementations do), and shares them with the
add-on terms of a composition such as ``trades+lp`` (:class:`Term`, :mod:`.compose`). Where an
original runs a pass more than its loss needs, the method reproduces what that pass leaves
behind with :meth:`Passes.update_bn` (TRADES' second clean pass: BatchNorm's running statistics
are updated clean, adversarial, clean per step, as in the authors' ``trades_loss``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Callable, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import attacks, compiling
from ..coercion import build
from ..errors import ConfigError
from ..models import ra
from ..tensors import fp32
from ..threat import Threat

Metrics = dict[str, torch.Tensor]


@dataclass
class MethodConfig:
    """The field every method has: how BatchNorm behaves while the training attack runs (the
    threat model itself is not a method's: it comes with each call, see the module docstring)."""

    attack_bn: Literal["eval", "train"] = "eval"


# An attack-loss hook: ``hook(model, x, spec, loss) -> loss`` rewrites the objective an attack of
# the method maximizes (``spec`` is what the method asked for: "ce", "kl", a callable, ...);
# returning ``loss`` itself leaves the attack as it was.
AttackHook = Callable[[nn.Module, torch.Tensor, "attacks.LossSpec", "attacks.losses.AttackLoss"],
                      "attacks.losses.AttackLoss"]


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
    auxiliary view) and ``index`` the RA point (None for the step's own passes). ``threat`` is
    the step's threat model, for terms that attack inside the loss. ``taps`` are module paths
    whose outputs each pass also records (:meth:`tap`; ADR on the small CNN compares the
    convolutional features).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor | None = None,
                 threat: Threat | None = None, taps: tuple[str, ...] = ()):
        self.model, self.x, self.x_adv, self.y, self.threat = model, x, x_adv, y, threat
        self.taps = tuple(taps)
        self.aux: dict[str, list] = {}
        self.tapped: dict[str, dict[str, torch.Tensor]] = {}
        self.root, self.index = self, None

    def _run(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not hasattr(self.model, "forward_features"):
            if self.taps:
                self._need_features(None)
            return None, self.model(x)  # a plain nn.Module: logits only
        if self.taps and not hasattr(self.model, "capture"):
            raise ConfigError(f"this objective reads the outputs of {', '.join(self.taps)}: the model must offer "
                              "capture(paths), as advrep's models do")
        capture = self.model.capture(self.taps) if self.taps else contextlib.nullcontext({})
        # a compiled graph does not run hooks added after it was made: taps read the eager pass
        forward = compiling.eager_forward_features(self.model) if self.taps and compiling.is_compiled(self.model) \
            else self.model.forward_features
        with ra.labels(self.model, self.y), capture as store:
            out = forward(x)
        self.tapped[name] = dict(store)
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

    def tap(self, path: str, adv: bool = False) -> torch.Tensor:
        """The output of module ``path`` (one of ``taps``) in the clean or the adversarial pass
        of the step, flattened per sample (an auxiliary view reads its parent's)."""
        root = self.root
        if path not in root.taps:
            raise ConfigError(f"module '{path}' was not among the taps of this step's passes")
        _ = root.adv if adv else root.clean
        return root.tapped["adv" if adv else "clean"][path].flatten(1)

    def update_bn(self, x: torch.Tensor) -> None:
        """A training-mode forward of ``x`` without a graph, for what it leaves in BatchNorm's
        running statistics only (skipped on the step's auxiliary views, in eval mode and on a
        model with no BatchNorm that tracks running statistics, where it would change nothing)."""
        if self.index is not None or not self.model.training or not any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                for m in self.model.modules()):
            return
        with torch.no_grad(), ra.labels(self.model, self.y):
            self.model(x)

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
        super().__init__(parent.model, parent.x, parent.x_adv, parent.y, parent.threat)
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

    ``attack_hooks`` are the seam through which a composition's terms reach the method's attacks
    (:class:`AttackHook`; the composition sets them once, from its terms; :meth:`attack` applies
    them in order to every attack loss, after :func:`advrep.attacks.attack_loss` resolved it).
    """

    name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    adversarial: ClassVar[bool] = True  # False: perturb returns x unchanged
    base: ClassVar[bool] = False  # True: accepts add-on terms (``trades+lp``)
    head: ClassVar[str | None] = None  # the model head this method needs, if any
    supports_ra: ClassVar[bool] = True  # False: refused on a model with reverse attention
    readouts: ClassVar[tuple[str, ...]] = ()  # read-outs (advrep.readouts) logged per epoch and reported
    formula: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, **hparams):
        self.cfg = build(self.Config, hparams, "method")
        self.attack_hooks: tuple[AttackHook, ...] = ()

    def hparams(self) -> dict:
        return asdict(self.cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def head_args(self) -> dict:
        """Head options this method fixes (the config fills them in, and refuses other values)."""
        return {}

    def check_model(self, model) -> None:
        """Raise ConfigError at start-up if the configured model (a ``model`` config section)
        cannot run this method; reads the section, never changes it."""
        check_model_needs(f"method '{self.name}'", self.head, self.head_args(), self.supports_ra, model)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, *,
               loss: "attacks.LossSpec" = "ce", targeted: bool = False, clean_logits=None,
               **kwargs) -> torch.Tensor:
        """PGD in ``threat`` (``steps``/``step_size`` may be overridden) with the method's
        BatchNorm mode, maximizing ``loss`` through the method's attack hooks."""
        with bn_mode(model, self.cfg.attack_bn):
            if self.attack_hooks:  # resolved here, so each hook sees the objective itself
                resolved = attacks.attack_loss(loss, targeted=targeted, model=model, x=x, clean_logits=clean_logits)
                fn = resolved
                for hook in self.attack_hooks:
                    fn = hook(model, x, loss, fn)
                if fn is not resolved:  # a hook changed it (else the attack keeps the plain spec)
                    loss, clean_logits = fn, None
            if clean_logits is not None:
                kwargs["clean_logits"] = clean_logits
            return attacks.pgd(model, x, y, **{"eps": threat.eps, "step_size": threat.step_size,
                                               "steps": threat.steps, "norm": threat.norm, "loss": loss,
                                               "targeted": targeted, **kwargs})

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, p: Passes, y: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def taps(self, model: nn.Module) -> tuple[str, ...]:
        """Module paths of ``model`` whose outputs the loss reads besides features and logits."""
        return ()

    def objective(self, model, x, x_adv, y, threat: Threat | None = None) -> tuple[torch.Tensor, Metrics]:
        passes = Passes(model, x, x_adv, y, threat, taps=self.taps(model))
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
    which returns ``(loss, metrics)`` from the passes the base already ran. Two optional seams
    reach the base's attacks: :meth:`attack_hook` (rewrite every attack loss of the base) and
    :meth:`perturb` (replace the base's inner maximization).
    """

    name: ClassVar[str]
    Config: ClassVar[type] = TermConfig
    head: ClassVar[str | None] = None
    supports_ra: ClassVar[bool] = True
    readouts: ClassVar[tuple[str, ...]] = ()
    formula: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, **hparams):
        self.cfg = build(self.Config, hparams, f"terms.{self.name}")

    def hparams(self) -> dict:
        return asdict(self.cfg)

    def head_args(self) -> dict:
        return {}

    def check_model(self, model) -> None:
        check_model_needs(f"term '{self.name}'", self.head, self.head_args(), self.supports_ra, model)

    def attach(self, base: Method) -> None:
        """Called once by the composition with its base method, for terms whose defaults
        depend on the base (for example a clean cross-entropy only where the base lacks one)."""

    def taps(self, model: nn.Module) -> tuple[str, ...]:
        """Module paths of ``model`` whose outputs :meth:`value` reads (:meth:`Passes.tap`)."""
        return ()

    def attack_hook(self, base: Method) -> AttackHook | None:
        """A hook for every attack the composition runs (the base's and the term's own), or
        None (the default)."""
        return None

    def perturb(self, base: Method, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                threat: Threat) -> torch.Tensor | None:
        """Adversarial examples that replace the base's own, or None (the default: the base's)."""
        return None

    def value(self, p: Passes, y: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


def check_model_needs(who: str, head: str | None, head_args: dict, supports_ra: bool, model) -> None:
    """ConfigError if the ``model`` config section cannot give ``who`` the head, head options
    and reverse-attention support it declares (None in ``model.head``: auto, resolved to it)."""
    if head and model.head not in (None, head):
        raise ConfigError(f"{who} needs model.head={head}, got '{model.head}'")
    for key, value in head_args.items():
        if key in model.head_args and model.head_args[key] != value:
            raise ConfigError(f"{who} needs model.head_args.{key} = {value!r}, got {model.head_args[key]!r}; "
                              f"drop model.head_args.{key}")
    if getattr(model, "ra", False) and not supports_ra:
        raise ConfigError(f"{who} does not run on a model with reverse attention (model.ra); "
                          "set --model.ra=false")


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
