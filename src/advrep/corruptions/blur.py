"""Blur corruptions (Hendrycks & Dietterich's blur group: defocus, glass, motion, zoom, and the
held-out Gaussian blur) and their kernels, as the reference ``make_cifar_c.py`` builds them."""

from __future__ import annotations

import math

import numpy as np
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


def _gaussian_blur(x, c, g=None):
    if c == 0:
        return x
    k = gaussian_kernel(c)
    # separable; 'replicate' is skimage's default 'nearest' border
    return _conv(_conv(x, k[None, :], "replicate"), k[:, None], "replicate")


def _defocus_blur(x, c, g):
    return _conv(x, disk_kernel(*c), "reflect")  # cv2.filter2D's default border


def _glass_blur(x, c, g):
    """Blur, shuffle pixels locally, blur again (the reference's glass blur). The reference visits
    rows H - delta .. delta + 1 and, in each, columns W - delta .. delta + 1, both downwards, and
    swaps each pixel with the one offset by numpy's randint(-delta, delta) per axis (upper bound
    exclusive: -delta .. delta - 1); the swaps are sequential, so a pixel can travel several
    steps."""
    sigma, delta, iterations = c
    # the reference stores the first blur as uint8 (truncating); the 1e-4 keeps a value that is
    # an exact level (sigma 0.05 blurs nothing) at that level despite float rounding
    x = torch.floor(_gaussian_blur(x, sigma) * 255 + 1e-4) / 255
    n, ch, h, w = x.shape
    visits = [r * w + col for r in range(h - delta, delta, -1) for col in range(w - delta, delta, -1)]
    for _ in range(iterations):
        shift = torch.randint(-delta, delta, (len(visits), 2, n), generator=g, device=x.device)
        index = torch.from_numpy(_swapped(visits, (shift[:, 0] * w + shift[:, 1]).cpu().numpy(), n, h * w))
        x = x.flatten(2).gather(2, index.to(x.device)[:, None].expand(-1, ch, -1)).view(n, ch, h, w)
    return _gaussian_blur(x, sigma)


def _swapped(visits: list[int], partner: np.ndarray, n: int, size: int) -> np.ndarray:
    """(n, size) pixel index maps after the sequential swaps of ``visits`` (flat positions) with
    position + ``partner`` (visits, n): thousands of steps of a few values each, so they run on
    the host (one transfer of the draws and of the map instead of thousands of kernels)."""
    index, images = np.tile(np.arange(size), (n, 1)), np.arange(n)
    for a, offsets in zip(visits, partner):
        b = a + offsets
        here = index[:, a].copy()
        index[:, a] = index[images, b]
        index[images, b] = here
    return index


def motion_kernel(radius: float, sigma: float) -> torch.Tensor:
    """ImageMagick's motion-blur weights: 2 ceil(radius) + 1 taps exp(-i^2 / (2 sigma^2)),
    i = 0, 1, ..., one-sided (tap i is i pixels along the angle), summing to 1."""
    i = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    k = torch.exp(-i ** 2 / (2 * max(sigma, 1e-12) ** 2))
    return k / k.sum()


def motion_blur(x: torch.Tensor, radius: float, sigma: float, degrees: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage (the reference calls it through Wand) with one angle per
    image: tap i reads the pixel at (column + ceil(i cos a - 1/2), row + ceil(i sin a - 1/2)),
    coordinates outside the image clamped to the edge (ImageMagick's default virtual pixels)."""
    n, c, h, w = x.shape
    k = motion_kernel(radius, sigma).to(x)
    i = torch.arange(len(k), device=x.device, dtype=torch.float64)
    angle = torch.deg2rad(degrees.double())[:, None]
    dx = torch.ceil(i * torch.cos(angle) - 0.5).long()  # (n, taps)
    dy = torch.ceil(i * torch.sin(angle) - 0.5).long()
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    flat, out = x.flatten(2), torch.zeros_like(x.flatten(2))
    for t in range(len(k)):
        r = (rows + dy[:, t:t + 1]).clamp(0, h - 1)
        q = (cols + dx[:, t:t + 1]).clamp(0, w - 1)
        index = (r[:, :, None] * w + q[:, None, :]).flatten(1)
        out += k[t] * flat.gather(2, index[:, None].expand(-1, c, -1))
    return out.view(n, c, h, w)


def _motion_blur(x, c, g):
    radius, sigma = c
    degrees = torch.rand(len(x), generator=g, device=x.device, dtype=torch.float64) * 90 - 45
    return motion_blur(x, radius, sigma, degrees)


def zoom_matrix(size: int, factor: float) -> torch.Tensor:
    """(size, size) weights of the reference's clipped_zoom along one axis: the central
    ceil(size / factor) pixels resized by scipy.ndimage.zoom (linear, corners aligned) to
    round(that * factor) and the central ``size`` of those kept."""
    crop = math.ceil(size / factor)
    top, out = (size - crop) // 2, round(crop * factor)
    src = (torch.arange(size, dtype=torch.float64) + (out - size) // 2) * (crop - 1) / (out - 1)
    low = src.floor().clamp(max=crop - 1)
    frac = src - low
    m = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)
    m[rows, top + low.long()] += 1 - frac
    high = (low + 1).clamp(max=crop - 1).long()
    m[rows, top + high] += frac
    return m


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference's clipped_zoom: zoom into the centre by ``factor``, same size."""
    rows, cols = (zoom_matrix(s, factor).to(x) for s in x.shape[-2:])
    return rows @ x @ cols.T


def _zoom_blur(x, c, g):
    # the mean of the image and its zooms by np.arange(1, c, 0.01), as the reference: factor 1 is
    # included (the unzoomed image counts twice), and numpy's step, (1 + 0.01) - 1, puts 1.06 and
    # 1.11 inside the ranges and makes 1.25 a hair larger, so scipy rounds its zoomed size up
    factors = np.arange(1, c, 0.01)
    return (x + sum(clipped_zoom(x, float(z)) for z in factors)) / (len(factors) + 1)
