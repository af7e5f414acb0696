"""The threat model: one frozen value handed to every attack a method runs.

``Threat(norm, eps, step_size, steps)`` is what the training attack of a method uses
(``method.perturb(model, x, y, threat)``) and what terms that attack inside the loss read
(``method.objective(..., threat=threat)``). Methods never keep a copy: the trainer builds one
value from the config's ``threat`` section and, for the eps warm-up, a scaled copy per step, so
changing the threat model changes one thing.

Norms use RobustBench's names (``Linf``, ``L2``, and ``L1`` as AutoAttack names it); eps is in
pixel units of images in [0, 1].

Example::

    threat = Threat("Linf", eps=8 / 255, step_size=2 / 255, steps=10)
    x_adv = methods.create("trades").perturb(model, x, y, threat)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError

NORMS = ("Linf", "L2", "L1")
FIELDS = ("norm", "eps", "step_size", "steps")


@dataclass(frozen=True)
class Threat:
    norm: str = "Linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm '{self.norm}'; use one of: {', '.join(NORMS)}")
        for key in ("eps", "step_size"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"threat.{key} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ConfigError(f"threat.steps must be an integer >= 0, got {self.steps!r}")

    @classmethod
    def of(cls, section) -> "Threat":
        """The value of a resolved ``threat`` config section (no "auto" field left)."""
        values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise ConfigError(f"threat.{missing[0]} is unset; resolve the config against its dataset first")
        return cls(**values)

    def scaled(self, factor: float) -> "Threat":
        """eps and step scaled by ``factor`` (the training eps warm-up)."""
        return dataclasses.replace(self, eps=self.eps * factor, step_size=self.step_size * factor)


def parse_threat(text: str) -> tuple[str, float | None]:
    """An entry of ``eval.threats``: ``"L2:0.5"`` -> ("L2", 0.5), ``"Linf:8/255"`` -> ("Linf",
    0.0314...), ``"L1"`` -> ("L1", None: the dataset's default)."""
    norm, _, eps = str(text).partition(":")
    if norm not in NORMS:
        raise ConfigError(f"eval.threats: unknown norm in '{text}'; write NORM or NORM:EPS with NORM one of "
                          f"{', '.join(NORMS)} (e.g. [Linf:8/255, L2:0.5, L1:12])")
    if not eps:
        return norm, None
    try:
        num, _, den = eps.partition("/")
        value = float(num) / (float(den) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eval.threats: '{text}' has no readable eps; write e.g. L2:0.5 or Linf:8/255") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"eval.threats: the eps of '{text}' must be a positive number")
    if norm == "Linf" and value > 1:
        raise ConfigError(f"eval.threats: '{text}': a Linf radius is in pixel units of [0, 1] images, at most 1 "
                          "(write 8/255, not 8)")
    return norm, value


def threat_name(norm: str, eps: float) -> str:
    """``Linf 8/255``, ``L2 0.5``, ``L1 12``: how reports name a threat model."""
    return f"{norm} {eps * 255:.3g}/255" if norm == "Linf" and eps < 0.1 else f"{norm} {eps:g}"
