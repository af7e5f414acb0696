"""JPEG compression on tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K, the tables libjpeg scales by quality.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
         14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
         18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
           24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32
# JFIF full-range YCbCr (rows Y, Cb, Cr; Cb and Cr are offset by 128)
_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))  # its inverse


def quantization_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """libjpeg's scaling of the standard table: floor((T * s + 50) / 100) clamped to [1, 255],
    s = 5000 // q below 50, 200 - 2 q from 50."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float64).view(8, 8)
    return ((base * scale + 50) // 100).clamp(1, 255)


def _dct_matrix() -> torch.Tensor:
    """Orthonormal 8-point DCT-II, rows = frequencies (JPEG's transform, applied as D B D^T)."""
    k, n = torch.arange(8.0, dtype=torch.float64)[:, None], torch.arange(8.0, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * 0.5
    d[0] /= math.sqrt(2)
    return d


def _code(planes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """8-bit planes (N, K, H, W) through 8x8 block DCT, quantization by ``table``, inverse."""
    n, k, h, w = planes.shape
    x = F.pad(planes, (0, -w % 8, 0, -h % 8), mode="replicate")  # edge blocks repeat the border
    hb, wb = x.shape[2] // 8, x.shape[3] // 8
    blocks = x.view(n, k, hb, 8, wb, 8).transpose(3, 4) - 128
    d, q = _dct_matrix().to(x), table.to(x)
    coef = ((d @ blocks @ d.T) / q).round() * q
    out = (d.T @ coef @ d + 128).round().clamp(0, 255)
    return out.transpose(3, 4).reshape(n, k, hb * 8, wb * 8)[:, :, :h, :w]


def jpeg(x: torch.Tensor, quality: int, generator=None) -> torch.Tensor:
    """Baseline JPEG round trip of float images in [0, 1] at ``quality`` (1..100), as PIL's default
    save and decode: 8-bit samples; for colour, YCbCr with 4:2:0 chroma (2x2 means, decoded with
    libjpeg's 'fancy' triangle up-sampling, which is bilinear at factor 2); 8x8 block DCT quantized
    by the scaled standard tables. Deterministic (``generator`` is unused: the corruption
    table's signature)."""
    pix = (x * 255).round()
    if x.shape[1] == 1:
        return _code(pix, quantization_table(quality)) / 255
    ycc, rgb = (torch.tensor(m, dtype=x.dtype, device=x.device) for m in (_YCC, _RGB))
    offset = x.new_tensor([0, 128, 128]).view(1, 3, 1, 1)
    pix = (torch.einsum("ij,njhw->nihw", ycc, pix) + offset).round().clamp(0, 255)
    h, w = x.shape[-2:]
    chroma = F.avg_pool2d(F.pad(pix[:, 1:], (0, w % 2, 0, h % 2), mode="replicate"), 2)
    chroma = _code(chroma, quantization_table(quality, chroma=True))
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    pix = torch.cat((_code(pix[:, :1], quantization_table(quality)), chroma), 1)
    return torch.einsum("ij,njhw->nihw", rgb, pix - offset).round().clamp(0, 255) / 255
