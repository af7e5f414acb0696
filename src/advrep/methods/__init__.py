"""Training methods, one short file each, registered under their CLI names, and the add-on
terms that compose with a base objective (``trades+lp``).

``advrep.methods.create(name, **hparams)`` returns a method; ``method.perturb(model, x, y,
threat)`` returns ``x_adv`` for a :class:`~advrep.threat.Threat`, and ``method.objective(model, x,
x_adv, y, threat)`` returns ``(loss, metrics)``. A composition takes its terms' hyperparameters
as ``terms={"lp": {"weight": 0.5}}``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields

from ..errors import ConfigError
from ..registry import suggest
from ..threat import FIELDS as THREAT_FIELDS
from .base import Method, MethodConfig, Passes, Term
from .compose import Composite
from .registry import METHODS, TERMS

# Every module of this package registers its method or term on import: a new method is one
# new file, with no list to edit here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def bases() -> list[str]:
    return [name for name in METHODS.names() if METHODS.get(name).base]


def _split(name: str) -> tuple[type, list[str]]:
    base_name, *term_names = name.split("+")
    cls = METHODS.get(base_name)
    if term_names and not cls.base:
        raise ConfigError(f"method '{base_name}' takes no add-on terms; bases that do: {', '.join(bases())}")
    for t in term_names:
        TERMS.get(t)
        if term_names.count(t) > 1:
            raise ConfigError(f"term '{t}' appears twice in '{name}'")
    return cls, term_names


def create(name: str, terms: dict | None = None, **hparams) -> Method:
    cls, term_names = _split(name)
    for key in THREAT_FIELDS:
        if key in hparams:
            raise ConfigError(f"the threat model is not a method setting: pass {key} in the Threat given to "
                              f"perturb(model, x, y, threat), or set threat.{key} in a config")
    terms = dict(terms or {})
    for t in terms:
        if t not in term_names:
            raise ConfigError(f"terms.{t} is set, but method '{name}' has no '{t}' term; "
                              f"write the method as '{name}+{t}' or drop terms.{t}")
    method = cls(**hparams)
    if not term_names:
        return method
    return Composite(method, [TERMS.get(t)(**(terms.get(t) or {})) for t in term_names])


def head_of(name: str) -> str | None:
    """The model head method ``name`` (possibly ``base+term``) needs, if any."""
    cls, term_names = _split(name)
    heads = {h for h in (cls.head, *(TERMS.get(t).head for t in term_names)) if h}
    if len(heads) > 1:
        raise ConfigError(f"method '{name}' combines parts that need different heads: {', '.join(sorted(heads))}")
    return heads.pop() if heads else None


def readouts_of(name: str) -> tuple[str, ...]:
    """The read-outs method ``name`` (possibly ``base+term``) logs, without building it."""
    cls, term_names = _split(name)
    return tuple(dict.fromkeys([*cls.readouts, *(r for t in term_names for r in TERMS.get(t).readouts)]))


def validate_section(section: dict, terms: dict | None = None) -> tuple[dict, dict]:
    """Check a config's ``method`` section (``name`` plus hyperparameters) and its ``terms``
    section; return both with every default filled in."""
    section = dict(section)
    name = section.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("the method section needs a name, e.g. method: {name: pgd-at}")
    for key in THREAT_FIELDS:
        if key in section:
            raise ConfigError(f"set the attack's {key} with threat.{key}, not method.{key}")
    cls, term_names = _split(name)
    valid = [f.name for f in fields(cls.Config)]
    for key in section:
        if key not in valid:
            raise ConfigError(f"unknown config key 'method.{key}' for method '{cls.name}'{suggest(key, valid)}; "
                              f"valid keys: name, {', '.join(valid)}")
    if not isinstance(terms or {}, dict) or not all(isinstance(v or {}, dict) for v in (terms or {}).values()):
        raise ConfigError(f"'terms' must map term names to their settings, e.g. terms: {{lp: {{weight: 0.5}}}}; "
                          f"got {terms!r}")
    hp = create(name, terms=terms, **section).hparams()
    resolved_terms = hp.pop("terms", {})
    return {"name": name, **hp}, resolved_terms


__all__ = ["create", "bases", "head_of", "readouts_of", "Method", "MethodConfig", "Passes", "Term", "Composite", "METHODS", "TERMS",
           "validate_section"]
