"""The evaluation-attack registry: what ``--eval.attacks`` names, one attack per file.

An evaluation attack is a small class registered under its name. Evaluation
(:mod:`advrep.evaluation`), the gradient-masking checks, ``advrep compare`` and config validation
all read this registry, so an unknown name fails when the config is loaded, with the valid
names, and a new attack is one new file in this package (with its test)::

    @register_attack("my-pgd")
    class MyPGD(Attack):
        \"\"\"Paper, threat model, defaults, and a runnable example.\"\"\"
        title = "My PGD"

        def label(self, ev):
            return f"My PGD-{ev.pgd_steps}"

        def perturb(self, model, x, y, *, threat, ev, num_classes, device):
            return pgd(model, x, y, eps=threat.eps, norm=threat.norm, step_size=..., steps=...)

``threat`` is the evaluation's threat model (``norm``, ``eps``) and ``ev`` the ``eval`` config
section (steps, step sizes, restarts, queries). A *batched* attack returns adversarial examples
for one batch and evaluation scores them (correct clean and under attack); an attack that runs
over the whole set itself (AutoAttack) sets ``batched = False`` and implements :meth:`robust`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import ConfigError
from ..registry import Registry


class Attack:
    """Base class of the evaluation attacks (one instance per registered name).

    ``title``: the column heading in tables (``advrep compare``); ``whitebox``: counts in the
    white-box worst case that the masking checks compare the black-box and transfer attacks
    with; ``batched``: see the module docstring.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    whitebox: ClassVar[bool] = True
    batched: ClassVar[bool] = True

    def label(self, ev) -> str:
        """The row label in reports, with the settings that matter (``PGD-20×5``)."""
        return self.title

    def check(self, threat, ev) -> None:
        """Raise ConfigError naming the key when a setting leaves this attack unable to attack.
        Fields still ``None`` ("auto", before the dataset resolves them) are not checked."""

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ConfigError if ``model`` cannot be attacked this way."""

    def added_for(self, model: torch.nn.Module, names: list[str]) -> bool:
        """True when evaluation must add this attack for ``model`` (an adaptive attack its
        architecture calls for), given the requested ``names``."""
        return False

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor, *, threat, ev, num_classes: int,
                device) -> torch.Tensor:
        """Adversarial examples of one batch of float images ``x`` in [0, 1] (batched attacks)."""
        raise NotImplementedError

    def robust(self, model, x: torch.Tensor, y: torch.Tensor, *, threat, ev, device, state_dir=None,
               fingerprint: str = "", progress: bool = True) -> tuple[torch.Tensor, dict]:
        """``(per-sample robust mask (bool, CPU), facts for the report)`` over all of ``x``
        (attacks with ``batched = False``)."""
        raise NotImplementedError


ATTACKS: Registry[Attack] = Registry("evaluation attack")


def register_attack(name: str):
    """Register an :class:`Attack` subclass under ``name`` (one instance; its ``name`` set)."""

    def add(cls):
        cls.name = name
        ATTACKS.register(name)(cls())
        return cls

    return add


def need_positive(key: str, value, integer: bool = False) -> None:
    """ConfigError unless ``value`` (skipped when None) is a positive number (an integer >= 1
    if ``integer``)."""
    if value is None:
        return
    if integer:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    elif not (isinstance(value, (int, float)) and value > 0 and value != float("inf")):
        raise ConfigError(f"{key} must be a positive number, got {value!r}")

