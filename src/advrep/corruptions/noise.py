"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt and pepper), speckle."""

from __future__ import annotations

import torch


def _randn(x, g):
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _rand(x, g):
    return torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _gaussian_noise(x, c, g):
    return x + c * _randn(x, g)


def _shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c  # c photons per unit intensity


def _impulse_noise(x, c, g):
    # salt and pepper on each value independently (skimage's 's&p', half salt)
    flip, salt = _rand(x, g) < c, _rand(x, g) < 0.5
    return torch.where(flip, salt.to(x.dtype), x)


def _speckle_noise(x, c, g):
    return x + x * c * _randn(x, g)
