"""Composition ``base+term[+term...]``: a base objective plus weighted add-on terms.

The composite attacks as its base does and adds ``weight · term.value(passes, y)`` for each
term, where ``passes`` (:class:`~.base.Passes`) holds the forward passes the base already ran,
so no network pass is repeated. Term hyperparameters live in the config's ``terms`` section
(``--terms.lp.weight=0.5``); the run directory's config.yaml records them all.

Terms reach the base's attacks through two declared seams only: the attack-loss hooks they
offer (:meth:`~.base.Term.attack_hook`), which the composite installs once as the base's
``attack_hooks``, and :meth:`~.base.Term.perturb`, which may replace the base's inner
maximization. What the composite needs of the model is the union of its parts' needs.
"""

from __future__ import annotations

from .base import Method, Passes, Term


class Composite(Method):
    def __init__(self, base: Method, terms: list[Term]):  # noqa: super().__init__ builds no cfg here
        self.base = base
        self.terms = terms
        for term in terms:
            term.attach(base)
        base.attack_hooks = tuple(h for h in (t.attack_hook(base) for t in terms) if h is not None)
        self.attack_hooks = base.attack_hooks
        self.name = "+".join([base.name, *(t.name for t in terms)])
        self.adversarial = base.adversarial
        self.supports_ra = base.supports_ra and all(t.supports_ra for t in terms)
        self.readouts = tuple(dict.fromkeys([*base.readouts, *(r for t in terms for r in t.readouts)]))

    @property
    def cfg(self):
        return self.base.cfg

    def hparams(self) -> dict:
        return {**self.base.hparams(), "terms": {t.name: t.hparams() for t in self.terms}}

    def head_args(self) -> dict:
        return {k: v for part in (self.base, *self.terms) for k, v in part.head_args().items()}

    def check_model(self, model) -> None:
        self.base.check_model(model)
        for term in self.terms:
            term.check_model(model)

    def taps(self, model):
        return tuple(dict.fromkeys([*self.base.taps(model), *(p for t in self.terms for p in t.taps(model))]))

    def attack(self, model, x, y, threat, **kwargs):
        return self.base.attack(model, x, y, threat, **kwargs)

    def perturb(self, model, x, y, threat):
        for term in self.terms:
            x_adv = term.perturb(self.base, model, x, y, threat)
            if x_adv is not None:
                return x_adv
        return self.base.perturb(model, x, y, threat)

    def loss(self, p: Passes, y):
        loss, metrics = self.base.loss(p, y)
        for term in self.terms:
            value, extra = term.value(p, y)
            loss = loss + term.cfg.weight * value
            metrics.update({f"{term.name}_{k}": v for k, v in extra.items()})
        return loss, metrics
