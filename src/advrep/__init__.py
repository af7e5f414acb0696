"""advrep: adversarial training that shapes the feature space."""

__version__ = "0.1.0"
