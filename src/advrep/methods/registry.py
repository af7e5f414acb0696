"""The method and add-on term registries, keyed by their CLI names."""

from ..registry import Registry

METHODS = Registry("method")
TERMS = Registry("add-on term")


def _registrar(registry: Registry):
    def register(name: str):
        """Register a class under ``name`` and record the name on the class."""

        def add(cls):
            cls.name = name
            return registry.register(name)(cls)

        return add

    return register


register = _registrar(METHODS)
register_term = _registrar(TERMS)
