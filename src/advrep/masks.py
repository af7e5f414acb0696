"""Per-sample robust masks in a report, compactly: one bit per image, base64, with a digest of
the images they were made on, so that ``advrep compare`` can pair two reports image by image
(the exact McNemar test, :mod:`advrep.stats`)."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import torch

from .tensors import to_uint8

MASK_ENCODING = "bits: numpy.packbits(bitorder='little') of the per-sample robust flags, base64"


def encode_mask(mask: torch.Tensor) -> str:
    return base64.b64encode(np.packbits(mask.numpy().astype(bool), bitorder="little").tobytes()).decode("ascii")


def decode_mask(text: str, n: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), bitorder="little")[:n]
    return torch.from_numpy(bits.astype(bool))


def images_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-1 of the evaluated images (as 8-bit) and labels: two reports with the same digest were
    made on the same images, so their masks pair up sample by sample."""
    h = hashlib.sha1(to_uint8(x).contiguous().cpu().numpy().tobytes())
    h.update(y.to(torch.int64).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
