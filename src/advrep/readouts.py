"""Read-outs: numbers about a model's feature space, logged per epoch and put in the report.

A read-out is a function ``(probe) -> dict`` of JSON-serializable values, registered by
name. A :class:`Probe` holds a model in eval mode, a fixed set of images with labels, and
(computed once, on first use, in batches) their PGD adversarial examples and the clean and
adversarial penultimate features and logits, so several read-outs share one attack.

Where they run:
- per epoch, on the validation slice, the read-outs a method lists in ``Method.readouts``
  plus ``train.readouts``; the trainer's validation accuracies come from the same probe;
- in ``advrep eval``, the same names plus ``eval.readouts``, on the evaluated test images.

Example::

    @register_readout("feature_shift")
    def feature_shift(probe):
        ...
        return {"mean": 0.42}

A read-out may come with a ``plot`` function (result -> matplotlib figure); the report then
shows its picture.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable

import torch

from . import attacks
from .compiling import is_compiled, kept
from .registry import Registry
from .tensors import to_float

READOUTS: Registry[Callable[["Probe"], dict]] = Registry("read-out")
PLOTS: dict[str, Callable[[dict], "matplotlib.figure.Figure"]] = {}  # noqa: F821


def register_readout(name: str, plot: Callable[[dict], "matplotlib.figure.Figure"] | None = None):  # noqa: F821
    """Register a read-out; ``plot`` (optional) turns its result into a matplotlib figure,
    which the report saves as ``<name>.png`` and shows in report.md."""

    def add(fn):
        if plot is not None:
            PLOTS[name] = plot
        return READOUTS.register(name)(fn)

    return add


class Probe:
    """Images, labels and their adversarial counterparts, with features and logits, for read-outs.

    ``x`` is uint8 (N, C, H, W) or floats in [0, 1], on any device; everything derived lives on
    ``device``.
    The attack is PGD-CE with a uniform start in the given threat model. On a compiled model
    (:mod:`advrep.compiling`) the attack and the passes pad the last batch to ``batch_size``
    rows, so the static-shape graphs are reused (eval mode: a row's result does not depend on
    the others); the outputs kept are copies (:func:`advrep.compiling.kept`), never memory that
    a CUDA-graph replay may overwrite.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                 step_size: float, steps: int, device, batch_size: int = 500,
                 x_adv: torch.Tensor | None = None):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.x = to_float(x.to(device))
        self.y = y.to(device)
        self.attack = dict(norm=norm, eps=eps, step_size=step_size, steps=steps)
        if x_adv is not None:  # adversarial examples the caller already made with this attack
            self.__dict__["x_adv"] = x_adv.to(device)

    def batches(self, *tensors: torch.Tensor):
        for start in range(0, len(self.y), self.batch_size):
            yield tuple(t[start:start + self.batch_size] for t in tensors)

    def _padded(self, fn, *tensors: torch.Tensor):
        """``fn`` over the batches of ``tensors``, each result cut back to the batch's rows; on a
        compiled model a short last batch is first filled up with its own first rows."""
        pad = is_compiled(self.model) and len(self.y) > 0
        for batch in self.batches(*tensors):
            n = len(batch[0])
            if pad and n < min(self.batch_size, len(self.y)):
                idx = torch.arange(min(self.batch_size, len(self.y)), device=batch[0].device) % n
                batch = tuple(t[idx] for t in batch)
            yield tuple(out[:n] for out in fn(*batch))

    def _eval_mode(self):
        was = self.model.training
        self.model.eval()
        return was

    @cached_property
    def x_adv(self) -> torch.Tensor:
        was = self._eval_mode()
        try:
            return torch.cat([x_adv for (x_adv,) in self._padded(
                lambda xb, yb: (attacks.pgd(self.model, xb, yb, random_start="uniform", **self.attack),),
                self.x, self.y)])
        finally:
            self.model.train(was)

    def _passes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was = self._eval_mode()
        feats, logits = [], []
        with_features = hasattr(self.model, "forward_features")

        def passes(xb):  # a network of one's own gives logits only (read-outs of features refuse it)
            return self.model.forward_features(xb) if with_features else (self.model(xb),)

        try:
            with torch.no_grad():
                for out in self._padded(passes, x):
                    if with_features:
                        feats.append(kept(out[0]))
                    logits.append(kept(out[-1]))
        finally:
            self.model.train(was)
        return (torch.cat(feats) if feats else None), torch.cat(logits)

    @cached_property
    def clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` of the clean images."""
        return self._passes(self.x)

    @cached_property
    def adv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` of the adversarial images."""
        return self._passes(self.x_adv)

    def accuracies(self) -> dict[str, float]:
        """Clean accuracy and robust accuracy (correct clean and under the attack)."""
        clean_ok = self.clean[1].argmax(1) == self.y
        adv_ok = clean_ok & (self.adv[1].argmax(1) == self.y)
        return {"clean": clean_ok.float().mean().item(), "robust": adv_ok.float().mean().item()}


def run(names, probe: Probe) -> dict[str, dict]:
    """Each named read-out's result on ``probe`` (unknown names raise the registry's error)."""
    return {name: READOUTS.get(name)(probe) for name in names}


@register_readout("feature_shift")
def feature_shift(probe: Probe) -> dict:
    """How far the attack moves the penultimate features: mean ‖h − h'‖ and its ratio to mean ‖h‖."""
    h, h_adv = probe.clean[0], probe.adv[0]
    shift = (h - h_adv).norm(dim=1).mean().item()
    return {"mean_shift": shift, "relative_shift": shift / max(h.norm(dim=1).mean().item(), 1e-12)}
