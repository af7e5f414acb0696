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
