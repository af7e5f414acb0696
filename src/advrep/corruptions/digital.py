"""Digital corruptions: pixelate (PIL's BOX resampling, bit for bit) and the elastic transform.
(Contrast and JPEG, the rest of Hendrycks & Dietterich's digital group, are in ``colour.py`` and
``jpeg.py``.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blur import gaussian_kernel

_PRECISION = 22  # Pillow's 8-bit resampling: coefficients in fixed point with 22 fractional bits


def box_matrix(size: int, new: int) -> torch.Tensor:
    """(new, size) weights of Pillow's BOX filter resizing ``size`` pixels to ``new`` (either
    way): output i averages, with equal weights, the input pixels whose centres fall in the
    window of half-width max(size / new, 1) / 2 around its own centre mapped to the input, the
    window (i s, (i + 1) s] for s = size / new when shrinking (so, unlike an area average, a
    pixel straddling two windows counts wholly in one); each row sums to 1. Pillow's own loop,
    in float64 as it computes them."""
    scale = size / new
    support = 0.5 * max(scale, 1.0)
    m = torch.zeros(new, size, dtype=torch.float64)
    for i in range(new):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size)
        inside = [j for j in range(lo, hi) if -0.5 < (j - centre + 0.5) / max(scale, 1.0) <= 0.5]
        m[i, inside] = 1 / len(inside)
    return m


def _resample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """8-bit samples (float64 integers) resized as Pillow does: horizontal pass first, each pass
    rounding to 8 bits, with the coefficients rounded to fixed point (float64 sums of integers
    below 2^31 are exact, so the arithmetic is Pillow's)."""
    one = 1 << _PRECISION

    def fixed(m):
        return (m * one + 0.5).floor().to(x)

    x = ((x @ fixed(cols).T + one // 2) / one).floor().clamp(0, 255)
    return ((fixed(rows) @ x + one // 2) / one).floor().clamp(0, 255)


def _pixelate(x, c, g):
    """The reference's pixelate: the 8-bit image resized with PIL's BOX filter to int(H c) x
    int(W c) and back to H x W (the way up is nearest-neighbour: each window holds one centre)."""
    h, w = x.shape[-2:]
    small = (int(h * c), int(w * c))
    pix = (x.double() * 255).round()
    pix = _resample(pix, box_matrix(h, small[0]).to(pix.device), box_matrix(w, small[1]).to(pix.device))
    pix = _resample(pix, box_matrix(small[0], h).to(pix.device), box_matrix(small[1], w).to(pix.device))
    return (pix / 255).to(x.dtype)


def _symmetric_blur(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """skimage's gaussian(mode='reflect', truncate=3) on (N, 1, H, W): scipy's 'reflect' border
    repeats the edge pixel (d c b a | a b c d), which torch has no padding mode for."""
    if sigma == 0:
        return noise
    k = gaussian_kernel(sigma, radius=int(3 * sigma + 0.5)).to(noise)
    r = len(k) // 2
    for dim in (2, 3):
        n = noise.shape[dim]
        index = torch.arange(-r, n + r, device=noise.device).remainder(2 * n)  # period 2n
        padded = noise.index_select(dim, torch.where(index < n, index, 2 * n - 1 - index))
        weights = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        noise = F.conv2d(padded, weights)
    return noise


def _affine_grid(pts_from: torch.Tensor, pts_to: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) affine maps taking each image's 3 points ``pts_from`` (N, 3, 2, as x, y) to
    ``pts_to``, as cv2.getAffineTransform solves them."""
    ones = torch.ones(*pts_from.shape[:2], 1, dtype=pts_from.dtype, device=pts_from.device)
    return torch.linalg.solve(torch.cat((pts_from, ones), 2), pts_to).transpose(1, 2)


def _sample(x: torch.Tensor, col: torch.Tensor, row: torch.Tensor, mirror_centres: bool) -> torch.Tensor:
    """Bilinear samples of ``x`` at pixel coordinates (N, H, W). ``mirror_centres``: reflect
    about the edge pixels' centres (OpenCV's BORDER_REFLECT_101), else about the image's edges
    (scipy's 'reflect'); grid_sample does both, with align_corners True and False."""
    h, w = x.shape[-2:]
    if mirror_centres:
        grid = torch.stack((2 * col / (w - 1) - 1, 2 * row / (h - 1) - 1), -1)
    else:
        grid = torch.stack(((2 * col + 1) / w - 1, (2 * row + 1) / h - 1), -1)
    return F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="reflection", align_corners=mirror_centres)


def _elastic_transform(x, c, g):
    """The reference's elastic transform, its parameters fractions of the image size (the
    reference's are multiples of IMSIZE = 32): a random affine map moving the 3 points
    centre + (s, s), (s, -s), (-s, -s), s = size // 3, by U(-affine, affine) each (OpenCV's
    bilinear warp, BORDER_REFLECT_101), then a displacement field alpha * (U(-1, 1) smoothed by
    a Gaussian of sigma), one per axis, applied by bilinear sampling with scipy's 'reflect'
    border. (The reference warps with OpenCV's 1/32-pixel fixed-point interpolation; this warp
    is exact.)"""
    alpha, sigma, affine = c
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, affine = alpha * size, sigma * size, affine * size
    f64 = dict(device=x.device, dtype=torch.float64)
    cy, cx, s = h // 2, w // 2, min(h, w) // 3
    pts = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], **f64).expand(n, 3, 2)
    moved = pts + (torch.rand((n, 3, 2), generator=g, **f64) * 2 - 1) * affine
    inverse = _affine_grid(moved, pts)  # warpAffine samples the source at M^-1 (destination)
    rows, cols = torch.meshgrid(torch.arange(h, **f64), torch.arange(w, **f64), indexing="ij")
    dest = torch.stack((cols, rows, torch.ones_like(rows)), -1)
    src = (inverse[:, None, None] @ dest[..., None])[..., 0]  # (n, h, w, 2)
    x = _sample(x, src[..., 0], src[..., 1], mirror_centres=True)
    noise = torch.rand((n, 2, h, w), generator=g, **f64) * 2 - 1
    dx, dy = (_symmetric_blur(noise[:, i:i + 1], sigma)[:, 0] * alpha for i in range(2))
    return _sample(x, cols + dx, rows + dy, mirror_centres=False)

