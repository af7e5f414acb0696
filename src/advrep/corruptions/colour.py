"""Colour corruptions: brightness and saturation in HSV, contrast."""

from __future__ import annotations

import torch


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, all three in [0, 1] (hue 0 for greys, as skimage)."""
    r, g, b = x.unbind(1)
    v, arg = x.max(1)
    delta = v - x.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(arg == 0, ((g - b) / safe) % 6,
                      torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack((hue, sat, v), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel n in (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 h) mod 6."""
    h, s, v = (t.unsqueeze(1) for t in x.unbind(1))
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + 6 * h) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def _brightness(x, c, g):
    if x.shape[1] == 1:  # a grey image's HSV value is its intensity
        return x + c
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(torch.cat((hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)), 1))


def _saturate(x, c, g):
    scale, shift = c
    hsv = rgb_to_hsv(x)
    sat = (hsv[:, 1:2] * scale + shift).clamp(0, 1)
    return hsv_to_rgb(torch.cat((hsv[:, :1], sat, hsv[:, 2:]), 1))


def _contrast(x, c, g):
    mean = x.mean((2, 3), keepdim=True)  # per image and channel, as the reference
    return (x - mean) * c + mean
