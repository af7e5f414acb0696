"""advrep: adversarial training that shapes the feature space.

From Python (docs/python.md)::

    import advrep
    report = advrep.evaluate(model, x, y, dataset="cifar10", attacks=["pgd", "autoattack"])
    run = advrep.train("configs/trades-cifar10-resnet18.yaml", train={"epochs": 10})
    model = advrep.load("runs/trades-cifar10-resnet18")
    x_adv = advrep.attack("pgd", model, x, y, dataset="cifar10")
    method = advrep.method("trades", beta=6.0)

The names load on first use, so ``import advrep`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {"evaluate": "api", "attack": "api", "train": "api", "load": "api", "method": "api", "Report": "api",
        "Result": "api", "Threat": "threat"}
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from .api import Report, Result, attack, evaluate, load, method, train
    from .threat import Threat


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'advrep' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
