"""White-box attacks (gradient with respect to the input only, model mode left as found) and
the bridge to the official AutoAttack code."""

from .autoattack import autoattack, square
from .losses import ce, cw_margin, kl_to
from .pgd import fgsm, input_grad_only, multi_targeted, pgd

__all__ = ["pgd", "fgsm", "multi_targeted", "autoattack", "square", "input_grad_only", "ce", "cw_margin", "kl_to"]
