"""An adaptive attack on ANCRA's reverse attention (:mod:`advrep.models.ra`): PGD-k through a
softmax stand-in for RA's test-time selection.

At test time RA weights its last stage by the classifier row ``W[argmax a]`` of an auxiliary
prediction ``a``; the argmax has no input gradient, which hides part of the model from gradient
attacks (the masking checks caught it on MNIST, docs/ancra.md). ``ra-soft`` differentiates
``softmax(a)·W`` instead (as BPDA does for a non-differentiable layer) with the PGD settings of
the evaluation (``eval.pgd_steps``, ``eval.pgd_step_size``, ``eval.pgd_restarts``), and its examples
are scored on the model as deployed. Evaluation adds it to every RA model's report when ``pgd``
runs; asking for it on a model without RA is an error.

Example::

    advrep eval runs/trades+anc-mnist-small-cnn --eval.attacks=[pgd,ra-soft]
"""

from __future__ import annotations

from ..errors import ConfigError
from ..models import ra
from .pgd import PGD
from .registry import Attack, register_attack


@register_attack("ra-soft")
class RASoft(Attack):
    title = "PGD (RA soft)"

    def label(self, ev) -> str:
        return f"{PGD().label(ev)} (RA soft selection)"

    def check(self, threat, ev) -> None:
        PGD().check(threat, ev)

    def check_model(self, model) -> None:
        if ra.state(model) is None:
            raise ConfigError("evaluation attack 'ra-soft' needs a model with reverse attention (model.ra)")

    def added_for(self, model, names) -> bool:
        return ra.state(model) is not None and "pgd" in names

    def perturb(self, model, x, y, *, threat, ev, num_classes, device):
        self.check_model(model)
        with ra.soft_selection(model):
            return PGD().perturb(model, x, y, threat=threat, ev=ev, num_classes=num_classes, device=device)
