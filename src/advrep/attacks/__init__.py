"""Attacks: the PGD primitive and its relatives (gradient with respect to the input only, model
mode left as found), the per-sample losses, the bridge to the official AutoAttack code, and the
registry of evaluation attacks (:mod:`.registry`), one attack per file.

Every module of this package registers its evaluation attack on import: a new attack is one new
file, with no list to edit here. ``advrep list attacks`` prints the registry.
"""

import importlib
import pkgutil

from .autoattack import autoattack
from .fgsm import fgsm
from .losses import LossSpec, attack_loss, ce, clean_targets, cw_margin, kl_to
from .multi_targeted import multi_targeted
from .pgd import input_grad_only, pgd
from .registry import ATTACKS, Attack, register_attack
from .square import square

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["pgd", "fgsm", "multi_targeted", "autoattack", "square", "input_grad_only", "attack_loss", "clean_targets", "LossSpec",
           "ce", "cw_margin", "kl_to", "ATTACKS", "Attack", "register_attack"]
