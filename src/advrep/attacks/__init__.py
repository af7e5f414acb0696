"""White-box attacks: gradient with respect to the input only, model mode left as found."""

from .losses import ce, cw_margin, kl_to
from .pgd import fgsm, input_grad_only, pgd

__all__ = ["pgd", "fgsm", "input_grad_only", "ce", "cw_margin", "kl_to"]
