"""Weather corruptions: fog (the reference's plasma fractal), snow, and ``frost_like``, a
procedural stand-in for the reference's frost photographs. (Brightness, the fourth of
Hendrycks & Dietterich's weather group, is a colour operation: ``colour.py``.)"""

from __future__ import annotations

import torch

from .blur import clipped_zoom, motion_blur


def plasma_fractal(n: int, size: int, decay: float, generator: torch.Generator, device=None,
                   dtype=torch.float64) -> torch.Tensor:
    """(n, size, size) diamond-square height maps in [0, 1] (min 0 and max 1 each), ``size`` a
    power of two, as the reference's ``plasma_fractal``: corner (0, 0) starts at 0; per level,
    each square's centre is the mean of its 4 corners, then each edge midpoint the mean of its
    2 corners and the 2 neighbouring centres, the map wrapping round (np.roll), each plus
    wibble * U(-wibble, wibble); wibble starts at 100 and is divided by ``decay`` per level."""
    if size & (size - 1):
        raise ValueError(f"plasma_fractal needs a power of two, got {size}")
    m = torch.zeros(n, size, size, device=device, dtype=dtype)
    step, wibble = size, 100.0

    def wibbled_mean(total):
        noise = torch.rand(total.shape, generator=generator, device=device, dtype=dtype) * 2 - 1
        return total / 4 + wibble * wibble * noise

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        total = corners + corners.roll(-1, 1)
        m[:, half::step, half::step] = wibbled_mean(total + total.roll(-1, 2))
        centres, corners = m[:, half::step, half::step], m[:, ::step, ::step]
        # midpoints of the horizontal edges, then of the vertical ones
        m[:, ::step, half::step] = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, half::step, ::step] = wibbled_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / decay
    low = m.amin((1, 2), keepdim=True)
    return (m - low) / (m.amax((1, 2), keepdim=True) - low)


def _fog(x, c, g):
    """x + amount * plasma, rescaled by max / (max + amount) with max the image's largest value;
    the map (the next power of two at least the image's size, cropped) is shared by channels."""
    amount, decay = c
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    fog = plasma_fractal(n, size, decay, g, x.device, x.dtype)[:, None, :h, :w]
    peak = x.amax((1, 2, 3), keepdim=True)
    return (x + amount * fog) * peak / (peak + amount)


def _grey(x):
    """OpenCV's RGB -> grey (0.299, 0.587, 0.114); a grey image is its own."""
    if x.shape[1] == 1:
        return x
    return (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _snow(x, c, g):
    """The reference's snow: a layer of N(mean, std) per pixel, zoomed into by ``zoom``,
    values below ``threshold`` zeroed, clipped to [0, 1], motion-blurred (radius, sigma) at an
    angle U(-135, -45) degrees; the image is first mixed with its whitened grey,
    blend x + (1 - blend) max(x, 1.5 grey + 0.5); the layer and its 180° rotation are added."""
    mean, std, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x.shape
    layer = torch.randn((n, 1, h, w), generator=g, device=x.device, dtype=x.dtype) * std + mean
    layer = clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    degrees = torch.rand(n, generator=g, device=x.device, dtype=torch.float64) * 90 - 135
    layer = motion_blur(layer, radius, sigma, degrees)
    x = blend * x + (1 - blend) * torch.maximum(x, _grey(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


# A pale blue-white, the colour of the frost photographs' crystals (an assumption, not measured).
_ICE = (0.85, 0.93, 1.0)


def ice_texture(n: int, channels: int, h: int, w: int, generator: torch.Generator, device=None,
                dtype=torch.float32) -> torch.Tensor:
    """(n, channels, h, w) in [0, 1]: advrep's procedural frost, a substitute for the reference's
    six frost photographs, which advrep does not ship. A rough plasma fractal (decay 1.5: much
    fine detail) for the frozen film, plus crystal needles: sparse bright seeds smeared along two
    random directions by motion blur; tinted pale blue. Not calibrated against the photographs."""
    size = 1 << (max(h, w) - 1).bit_length()
    film = plasma_fractal(n, size, 1.5, generator, device, dtype)[:, None, :h, :w]
    seeds = (torch.rand((n, 1, h, w), generator=generator, device=device, dtype=dtype) < 0.04).to(dtype)
    needles = torch.zeros_like(seeds)
    for _ in range(2):
        degrees = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * 360
        needles = torch.maximum(needles, motion_blur(seeds, 4, 6, degrees))
    needles = needles / needles.amax((2, 3), keepdim=True).clamp(min=1e-12)
    ice = (0.6 * film + 0.6 * needles).clamp(0, 1)
    tint = torch.tensor(_ICE, device=device, dtype=dtype).view(1, 3, 1, 1)
    return ice * (tint if channels == 3 else tint.mean())


def _frost_like(x, c, g):
    """The reference's frost blend, scale * x + amount * frost, with :func:`ice_texture` in place
    of a random crop of a frost photograph."""
    scale, amount = c
    return scale * x + amount * ice_texture(len(x), x.shape[1], *x.shape[-2:], g, x.device, x.dtype)
