"""Digital corruptions: pixelate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_matrix(size: int, new: int) -> torch.Tensor:
    """(new, size) box down-sampling: output i averages [i, i + 1) * size / new of the input,
    each input pixel weighted by its overlap (torch's 'area' mode would round the windows to
    whole pixels, which at 32 -> 30 averages two pixels almost everywhere)."""
    edges = torch.arange(new + 1, dtype=torch.float64) * size / new
    j = torch.arange(size, dtype=torch.float64)
    overlap = torch.minimum(edges[1:, None], j + 1) - torch.maximum(edges[:-1, None], j)
    return overlap.clamp(min=0) * new / size


def _pixelate(x, c, g):
    h, w = x.shape[-2:]
    rows, cols = box_matrix(h, int(h * c)).to(x), box_matrix(w, int(w * c)).to(x)
    small = torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
    return F.interpolate(small, size=(h, w), mode="nearest-exact")
