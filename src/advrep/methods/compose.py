"""Composition ``base+term[+term...]``: a base objective plus weighted add-on terms.

The composite attacks as its base does and adds ``weight · term.value(passes, y)`` for each
term, where ``passes`` (:class:`~.base.Passes`) holds the forward passes the base already ran,
so no network pass is repeated. Term hyperparameters live in the config's ``terms`` section
(``--terms.lp.weight=0.5``); the run directory's config.yaml records them all.
"""

from __future__ import annotations

from .base import Method, Passes, Term


class Composite(Method):
    def __init__(self, base: Method, terms: list[Term]):  # noqa: super().__init__ builds no cfg here
        self.base = base
        self.terms = terms
        for term in terms:
            term.attach(base)
        self.name = "+".join([base.name, *(t.name for t in terms)])
        self.adversarial = base.adversarial
        self.readouts = tuple(dict.fromkeys([*base.readouts, *(r for t in terms for r in t.readouts)]))

    @property
    def cfg(self):
        return self.base.cfg

    @cfg.setter
    def cfg(self, value):  # the trainer ramps eps through method.cfg
        self.base.cfg = value

    def hparams(self) -> dict:
        return {**self.base.hparams(), "terms": {t.name: t.hparams() for t in self.terms}}

    def check_model(self, model) -> None:
        self.base.check_model(model)
        for term in self.terms:
            term.check_model(model)

    def perturb(self, model, x, y):
        return self.base.perturb(model, x, y)

    def loss(self, p: Passes, y):
        loss, metrics = self.base.loss(p, y)
        for term in self.terms:
            value, extra = term.value(p, y)
            loss = loss + term.cfg.weight * value
            metrics.update({f"{term.name}_{k}": v for k, v in extra.items()})
        return loss, metrics
