"""Weather corruptions: fog."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _fog_like(x, c, g):
    """Approximates the reference's plasma-fractal fog: octaves of bilinearly up-sampled uniform
    noise on grids of 2, 4, ... up to the image size (rounded up to a power of two), octave k
    weighted decay^(-2k) (the reference's per-level amplitude is wibble^2 with wibble divided by
    ``decay`` each level), min-max normalized per image; then added with strength ``amount`` and
    rescaled by max / (max + amount) as the reference does."""
    amount, decay = c
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    noise = x.new_zeros(n, 1, size, size)
    for k in range(size.bit_length() - 1):
        grid = torch.rand((n, 1, 2 << k, 2 << k), generator=g, device=x.device, dtype=x.dtype) * 2 - 1
        noise += decay ** (-2 * k) * F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    noise = noise[..., :h, :w]
    low, high = noise.amin((2, 3), keepdim=True), noise.amax((2, 3), keepdim=True)
    noise = (noise - low) / (high - low)
    peak = x.amax((1, 2, 3), keepdim=True)
    return (x + amount * noise) * peak / (peak + amount)
