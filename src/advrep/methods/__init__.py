"""Training methods, one short file each, registered under their CLI names.

``advrep.methods.create(name, **hparams)`` returns a method; ``method.perturb(model, x, y)``
returns ``x_adv`` and ``method.objective(model, x, x_adv, y)`` returns ``(loss, metrics)``.
"""

from __future__ import annotations

from dataclasses import fields

from ..config import THREAT_FIELDS
from ..errors import ConfigError
from ..registry import suggest
from . import pgd_at, standard, trades  # noqa: F401  (registration)
from .base import Method, MethodConfig
from .registry import METHODS


def create(name: str, **hparams) -> Method:
    return METHODS.get(name)(**hparams)


def validate_section(section: dict) -> dict:
    """Check a config's ``method`` section (``name`` plus hyperparameters) and fill defaults."""
    section = dict(section)
    name = section.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("the method section needs a name, e.g. method: {name: pgd-at}")
    for key in THREAT_FIELDS:
        if key in section:
            raise ConfigError(f"set the attack's {key} with threat.{key}, not method.{key}")
    cls = METHODS.get(name)
    valid = [f.name for f in fields(cls.Config) if f.name not in THREAT_FIELDS]
    for key in section:
        if key not in valid:
            raise ConfigError(f"unknown config key 'method.{key}' for method '{name}'{suggest(key, valid)}; "
                              f"valid keys: name, {', '.join(valid)}")
    hp = cls(**section).hparams()
    return {"name": name, **{k: v for k, v in hp.items() if k not in THREAT_FIELDS}}


__all__ = ["create", "Method", "MethodConfig", "METHODS", "validate_section"]
