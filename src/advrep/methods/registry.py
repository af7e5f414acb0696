"""The method registry, keyed by the CLI name."""

from ..registry import Registry

METHODS = Registry("method")


def register(name: str):
    """Register a Method class under ``name`` and record the name on the class."""

    def add(cls):
        cls.name = name
        return METHODS.register(name)(cls)

    return add
