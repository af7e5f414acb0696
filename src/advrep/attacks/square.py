"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020), the score-based black-box attack of
AutoAttack's package (the official code, through :mod:`.autoattack`'s backend). Evaluation attack
``square``: ``eval.square_queries`` queries (1000) at the evaluation's eps and norm (Linf, L2, and
L1 where the installed code has it: pyautoattack's does); it needs no
gradients, so a model that hides them from PGD does not hide from it (the ``black_box`` check).

Example::

    advrep eval RUN --eval.attacks=[pgd,square] --eval.square_queries=5000
"""

from __future__ import annotations

import importlib

import torch

from ..errors import ConfigError
from .autoattack import backend
from .registry import Attack, need_positive, register_attack


def square(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", queries: int = 1000,
           device="cpu", seed: int = 0) -> torch.Tensor:
    """Square Attack (Andriushchenko et al., ECCV 2020), the black-box score-based attack of
    AutoAttack's package, as adversarial examples. Used by the gradient-masking checks."""
    module, version, _ = backend()
    square_cls = importlib.import_module(f"{module}.square").SquareAttack
    try:
        attack = square_cls(model, p_init=0.8, n_queries=queries, eps=eps, norm=norm, n_restarts=1, seed=seed,
                            verbose=False, device=device, resc_schedule=False)
    except AssertionError:  # the code's own norm check
        raise ConfigError(f"the Square Attack of {module} {version} has no {norm} version; drop square from "
                          "eval.attacks (the black_box check is then skipped) or install pyautoattack") from None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return attack.perturb(x, y)
    finally:
        model.train(was_training)


@register_attack("square")
class Square(Attack):
    title = "Square"
    whitebox = False

    def label(self, ev) -> str:
        return f"Square-{ev.square_queries}"

    def check(self, threat, ev) -> None:
        need_positive("eval.square_queries", ev.square_queries, integer=True)

    def perturb(self, model, x, y, *, threat, ev, num_classes, device):
        return square(model, x, y, eps=threat.eps, norm=threat.norm, queries=ev.square_queries, device=device)
