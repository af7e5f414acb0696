"""The official CIFAR-10-C / CIFAR-100-C files: ``<corruption>.npy`` (the test set at severities
1..5 stacked in order, uint8 (5N, H, W, C)) and ``labels.npy`` ((5N,)), memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .table import SEVERITIES

# The 15 corruptions of CIFAR-10-C / CIFAR-100-C that RobustBench's corruptions_acc averages
# (over all 5 severities), in the order of Hendrycks & Dietterich, and the 4 held out from them.
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression")
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy array ({type(e).__name__}: {e}); "
                        "download or copy it again") from None


def _official(directory: str | Path, n: int | None) -> tuple[np.ndarray, list[Path], int, int]:
    """Validated labels, corruption files, images per severity and images taken per severity."""
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError(f"corruption folder {folder} does not exist; point it at the folder that "
                        "holds CIFAR-10-C's <corruption>.npy files and labels.npy")
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise DataError(f"{labels_path} is missing; CIFAR-10-C / CIFAR-100-C ship it beside the "
                        "<corruption>.npy files, copy it there")
    labels = _read_npy(labels_path, mmap=False)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0 or len(labels) % 5:
        raise DataError(f"{labels_path} holds {labels.dtype} {labels.shape}; expected integer "
                        "labels (5*N,) for severities 1..5 stacked in order; download it again")
    files = sorted(p for p in folder.glob("*.npy") if p.name != "labels.npy")
    if not files:
        raise DataError(f"{folder} holds labels.npy but no <corruption>.npy; copy the corruption "
                        "files of CIFAR-10-C / CIFAR-100-C there")
    per = len(labels) // 5
    if n is not None and not 0 < n <= per:
        raise DataError(f"{folder} holds {per} images per severity, cannot take {n}; ask for 1..{per}")
    return labels, files, per, per if n is None else n


def _read_official(path: Path, labels: np.ndarray, take: int) -> np.ndarray:
    """The first ``take`` images of each severity block of one file, uint8 (5, take, C, H, W)."""
    x = _read_npy(path, mmap=True)  # a memory map: only the images taken are read
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)) \
            or len(x) != len(labels):
        raise DataError(f"{path} holds {x.dtype} {x.shape}; expected uint8 ({len(labels)}, H, W, C) "
                        "like labels.npy: 5 severity blocks of the test set, in order; download it again")
    return np.ascontiguousarray(x.reshape(5, len(x) // 5, *x.shape[1:3], -1)[:, :take].transpose(0, 1, 4, 2, 3))


def load_official(directory: str | Path, n: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-10-C / CIFAR-100-C from ``directory``: ``{"<corruption>/<severity>": (x uint8
    (n, C, H, W), y int64 (n,))}`` with the first ``n`` images of each severity (all if None)."""
    labels, files, per, take = _official(directory, n)
    out = {}
    for path in files:
        blocks = _read_official(path, labels, take)
        for s in SEVERITIES:
            y = labels[(s - 1) * per:(s - 1) * per + take].astype(np.int64)
            out[f"{path.stem}/{s}"] = (torch.from_numpy(blocks[s - 1]), torch.from_numpy(y))
    return out
