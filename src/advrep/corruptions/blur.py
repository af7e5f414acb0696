"""Blur corruptions and their kernels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """1-D Gaussian weights summing to 1; radius int(4 sigma + 0.5) as scipy/skimage truncate."""
    radius = int(4 * sigma + 0.5) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """2-D defocus kernel: the pixels within ``radius`` of the centre, equal weights, smoothed by
    a 3x3 Gaussian of sigma ``alias_blur`` (the reference's anti-aliasing); sums to 1."""
    half = math.ceil(radius) + 1  # one zero ring so the 3x3 smoothing loses no mass
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).double()
    g = gaussian_kernel(alias_blur, radius=1)
    smooth = F.conv2d(disk[None, None] / disk.sum(), (g[:, None] * g[None, :])[None, None], padding=1)
    return smooth[0, 0]


def _conv(x, kernel, mode):
    """Each channel convolved with the same 2-D ``kernel`` (symmetric, so no flip is needed)."""
    n, c, h, w = x.shape
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    flat = F.pad(x.reshape(n * c, 1, h, w), (pw, pw, ph, ph), mode=mode)
    return F.conv2d(flat, kernel.to(x)[None, None]).view(n, c, h, w)


def _gaussian_blur(x, c, g):
    k = gaussian_kernel(c)
    # separable; 'replicate' is skimage's default 'nearest' border
    return _conv(_conv(x, k[None, :], "replicate"), k[:, None], "replicate")


def _defocus_blur(x, c, g):
    return _conv(x, disk_kernel(*c), "reflect")  # cv2.filter2D's default border
