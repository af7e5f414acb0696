"""JPEG compression as PIL saves and reads it, on tensors, bit for bit.

The reference ``make_cifar_c.py`` saves each image with PIL at a quality and decodes it again.
PIL runs libjpeg-turbo with its defaults: baseline, 8-bit samples, the ITU-T T.81 Annex K tables
scaled by quality, for colour JFIF YCbCr with 4:2:0 chroma, the accurate integer DCT
(``JDCT_ISLOW``) both ways, and "fancy" (triangle) chroma up-sampling when decoding. This module
redoes that integer arithmetic, batched on any device: the fixed-point colour conversion
(``jccolor.c``/``jdcolor.c``), the edge replication to whole blocks and the biased 2x2 chroma
means (``jcprepct.c``/``jcsample.c``), the LL&M 13-bit fixed-point DCT and its inverse
(``jfdctint.c``/``jidctint.c``), libjpeg's rounding division by the quantization step, and the
9/3/3/1 up-sampling with its alternating rounding (``jdsample.c``). The output equals PIL's
decoded image exactly (tested against Pillow); the entropy coding in between is lossless, so it
is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K, the tables libjpeg scales by quality.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
         14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
         18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
           24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32

# The DCT's fixed point: constants are round(c * 2^13); the row pass keeps 2 extra bits.
_CONST, _PASS1 = 13, 2
_F0298, _F0390, _F0541, _F0765 = 2446, 3196, 4433, 6270
_F0899, _F1175, _F1501, _F1847 = 7373, 9633, 12299, 15137
_F1961, _F2053, _F2562, _F3072 = 16069, 16819, 20995, 25172


def _fix16(c: float) -> int:
    """The colour converters' 16-bit fixed point (libjpeg's FIX with SCALEBITS 16)."""
    return int(c * 65536 + 0.5)


def quantization_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """libjpeg's scaling of the standard table: floor((T * s + 50) / 100) clamped to [1, 255],
    s = 5000 // q below 50, 200 - 2 q from 50."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float64).view(8, 8)
    return ((base * scale + 50) // 100).clamp(1, 255)


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n  # round half up, arithmetic shift as libjpeg's DESCALE


def _odd_part(a0, a1, a2, a3):
    """The odd half of the LL&M butterfly, shared by the forward and the inverse transform."""
    z1, z2, z3, z4 = a0 + a3, a1 + a2, a0 + a2, a1 + a3
    z5 = (z3 + z4) * _F1175
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    return a0 * _F0298 + z1 + z3, a1 * _F2053 + z2 + z4, a2 * _F3072 + z2 + z3, a3 * _F1501 + z1 + z4


def _fdct(v: torch.Tensor, rows: bool) -> torch.Tensor:
    """One pass of jpeg_fdct_islow along the last axis (the row pass, or the column pass)."""
    d = v.unbind(-1)
    t0, t1, t2, t3 = (d[i] + d[7 - i] for i in range(4))
    t7, t6, t5, t4 = (d[i] - d[7 - i] for i in range(4))
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    shift = _CONST - _PASS1 if rows else _CONST + _PASS1

    def even(a):
        return a << _PASS1 if rows else _descale(a, _PASS1)

    z1 = (t12 + t13) * _F0541
    o7, o5, o3, o1 = (_descale(a, shift) for a in _odd_part(t4, t5, t6, t7))
    return torch.stack((even(t10 + t11), o1, _descale(z1 + t13 * _F0765, shift), o3,
                        even(t10 - t11), o5, _descale(z1 - t12 * _F1847, shift), o7), -1)


def _idct(c: torch.Tensor, shift: int) -> torch.Tensor:
    """One pass of jpeg_idct_islow along the last axis, descaled by ``shift`` bits. (libjpeg's
    shortcut for all-zero AC terms gives the same numbers, so it is not needed.)"""
    c = c.unbind(-1)
    z1 = (c[2] + c[6]) * _F0541
    t2, t3 = z1 - c[6] * _F1847, z1 + c[2] * _F0765
    t0, t1 = (c[0] + c[4]) << _CONST, (c[0] - c[4]) << _CONST
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_part(c[7], c[5], c[3], c[1])
    out = (t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3)
    return torch.stack([_descale(a, shift) for a in out], -1)


def _code(planes: torch.Tensor, quality: int, chroma: bool) -> torch.Tensor:
    """Integer planes (N, K, H, W), H and W multiples of 8, through the 8x8 block DCT,
    quantization and the inverse, as libjpeg does; returns 8-bit samples."""
    n, k, h, w = planes.shape
    blocks = planes.view(n, k, h // 8, 8, w // 8, 8).transpose(3, 4) - 128
    coef = _fdct(_fdct(blocks, rows=True).transpose(-1, -2), rows=False).transpose(-1, -2)
    q = quantization_table(quality, chroma).to(device=planes.device, dtype=torch.int64)
    # the DCT output is 8x too large, so the divisor is 8q; libjpeg rounds the magnitude
    coef = coef.sign() * ((coef.abs() + 4 * q) // (8 * q)) * q
    ws = _idct(coef.transpose(-1, -2), _CONST - _PASS1).transpose(-1, -2)
    # |values| < 512 here, where libjpeg's range-limit table is a clamp
    out = (_idct(ws, _CONST + _PASS1 + 3) + 128).clamp(0, 255)
    return out.transpose(3, 4).reshape(n, k, h, w)


def _pad(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Replicate the last row and column up to (h, w), as libjpeg's expand_*_edge."""
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate") \
        if (h, w) != x.shape[-2:] else x


def _ycc(rgb: torch.Tensor) -> torch.Tensor:
    """jccolor.c's RGB -> YCbCr on integers 0..255 (Cb and Cr round with 0.5 - 1/65536)."""
    r, g, b = rgb.unbind(1)
    half, offset = 1 << 15, 128 << 16
    y = (_fix16(0.299) * r + _fix16(0.587) * g + _fix16(0.114) * b + half) >> 16
    cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b + offset + half - 1) >> 16
    cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b + offset + half - 1) >> 16
    return torch.stack((y, cb, cr), 1)


def _rgb(ycc: torch.Tensor) -> torch.Tensor:
    """jdcolor.c's YCbCr -> RGB, clamped to 0..255."""
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    half = 1 << 15
    r = y + ((_fix16(1.402) * cr + half) >> 16)
    g = y + ((-_fix16(0.34414) * cb - _fix16(0.71414) * cr + half) >> 16)
    b = y + ((_fix16(1.772) * cb + half) >> 16)
    return torch.stack((r, g, b), 1).clamp(0, 255)


def _downsample(chroma: torch.Tensor) -> torch.Tensor:
    """2x2 sums + bias >> 2, the bias alternating 1, 2 along each row (jcsample.c), so that
    halves do not always round the same way."""
    n, k, h, w = chroma.shape
    sums = chroma.view(n, k, h // 2, 2, w // 2, 2).sum((3, 5))
    bias = 1 + torch.arange(w // 2, device=chroma.device) % 2
    return (sums + bias) >> 2


def _upsample(c: torch.Tensor) -> torch.Tensor:
    """jdsample.c's h2v2 fancy up-sampling: each output sample is 9/16 of its chroma sample,
    3/16 of each of the two nearer neighbours and 1/16 of the diagonal one, edges replicated;
    rounding alternates (+8, +7) along the row. Below 3 chroma columns libjpeg repeats samples."""
    if c.shape[-1] <= 2:
        return c.repeat_interleave(2, -2).repeat_interleave(2, -1)
    up = torch.cat((c[..., :1, :], c[..., :-1, :]), -2)
    down = torch.cat((c[..., 1:, :], c[..., -1:, :]), -2)
    s = torch.stack((3 * c + up, 3 * c + down), -2).flatten(-3, -2)  # column sums, rows doubled
    left = torch.cat((s[..., :1], s[..., :-1]), -1)
    right = torch.cat((s[..., 1:], s[..., -1:]), -1)
    return torch.stack(((3 * s + left + 8) >> 4, (3 * s + right + 7) >> 4), -1).flatten(-2)


def jpeg(x: torch.Tensor, quality: int, generator=None) -> torch.Tensor:
    """Baseline JPEG round trip of float images in [0, 1] (N, C, H, W), C = 1 or 3, at
    ``quality`` (1..100), equal to PIL's ``save(..., "JPEG", quality=quality)`` then decode on
    the same 8-bit image (``x`` is rounded to 8 bits first). Deterministic (``generator`` is
    unused: the corruption table's signature)."""
    h, w = x.shape[-2:]
    pix = (x * 255).round().to(torch.int64)
    up8 = (-h % 8 + h, -w % 8 + w)
    if x.shape[1] == 1:
        return _code(_pad(pix, *up8), quality, chroma=False)[..., :h, :w].to(x.dtype) / 255
    ycc = _ycc(pix)
    luma = _code(_pad(ycc[:, :1], *up8), quality, chroma=False)
    # chroma: full-resolution rows padded to even, columns to a whole chroma block (16 pixels);
    # the halved rows are then padded to a whole block
    ch, cw = (h + 1) // 2, (w + 1) // 2
    chroma = _downsample(_pad(ycc[:, 1:], 2 * ch, -w % 16 + w))
    chroma = _code(_pad(chroma, -ch % 8 + ch, chroma.shape[-1]), quality, chroma=True)
    chroma = _upsample(chroma[..., :ch, :cw])[..., :h, :w]
    return _rgb(torch.cat((luma[..., :h, :w], chroma), 1)).to(x.dtype) / 255
