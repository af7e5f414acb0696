"""Common corruptions: the official CIFAR-10-C / CIFAR-100-C files, or advrep's generated set.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019 (https://github.com/hendrycks/robustness). The threat model is not
adversarial: a fixed corruption at severity 1..5, and the score is plain accuracy.

- :func:`load_official` reads the published files (``<corruption>.npy``: the test set at
  severities 1..5 stacked in order, uint8 (5N, H, W, C); ``labels.npy``: (5N,)).
- :func:`generate` applies advrep's re-implementation of the corruptions that need no external
  tool, batched on the images' device, with the severity parameters of the reference
  ``make_cifar_c.py``. These are **not** the official CIFAR-10-C images (other RNG, advrep's own
  JPEG codec, resampling and fog): numbers are comparable across advrep runs, not to published
  CIFAR-10-C figures, and :func:`evaluate` marks them ``"source": "generated"``.
- :func:`evaluate` reports accuracy per corruption and severity, per severity, and the mean.

Example::

    import torch
    from advrep import corruptions, models
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    g = torch.Generator().manual_seed(0)
    x_c = corruptions.generate(x.float() / 255, "jpeg_compression", 3, generator=g)
    model = models.create("small-cnn", num_classes=10, head="linear", in_channels=3, image_size=32)
    report = corruptions.evaluate(model, x, y, device="cpu")  # generated: every corruption, severities 1-5
    # official files: corruptions.evaluate(model, x_test, y_test, device="cuda", directory="CIFAR-10-C")
"""

from __future__ import annotations

import math
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import ConfigError, DataError
from .tensors import fp32

SEVERITIES = (1, 2, 3, 4, 5)

# ------------------------------------------------------------------------- colour


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, all three in [0, 1] (hue 0 for greys, as skimage)."""
    r, g, b = x.unbind(1)
    v, arg = x.max(1)
    delta = v - x.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(arg == 0, ((g - b) / safe) % 6,
                      torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack((hue, sat, v), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel n in (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 h) mod 6."""
    h, s, v = (t.unsqueeze(1) for t in x.unbind(1))
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + 6 * h) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def _brightness(x, c, g):
    if x.shape[1] == 1:  # a grey image's HSV value is its intensity
        return x + c
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(torch.cat((hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)), 1))


def _saturate(x, c, g):
    scale, shift = c
    hsv = rgb_to_hsv(x)
    sat = (hsv[:, 1:2] * scale + shift).clamp(0, 1)
    return hsv_to_rgb(torch.cat((hsv[:, :1], sat, hsv[:, 2:]), 1))


def _contrast(x, c, g):
    mean = x.mean((2, 3), keepdim=True)  # per image and channel, as the reference
    return (x - mean) * c + mean


# -------------------------------------------------------------------------- noise


def _randn(x, g):
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _rand(x, g):
    return torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _gaussian_noise(x, c, g):
    return x + c * _randn(x, g)


def _shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c  # c photons per unit intensity


def _impulse_noise(x, c, g):
    # salt and pepper on each value independently (skimage's 's&p', half salt)
    flip, salt = _rand(x, g) < c, _rand(x, g) < 0.5
    return torch.where(flip, salt.to(x.dtype), x)


def _speckle_noise(x, c, g):
    return x + x * c * _randn(x, g)


# --------------------------------------------------------------------------- blur


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


# --------------------------------------------------------------------------- JPEG

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


# ---------------------------------------------------------------------------- fog


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


# ---------------------------------------------------------------------- the table

# name -> (function, parameter at severities 1..5), parameters from make_cifar_c.py
_CORRUPTIONS = {
    "gaussian_noise": (_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (_shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "speckle_noise": (_speckle_noise, (0.06, 0.10, 0.12, 0.16, 0.20)),
    "gaussian_blur": (_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "defocus_blur": (_defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "brightness": (_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "saturate": (_saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
    "pixelate": (_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": (jpeg, (80, 65, 58, 50, 40)),
    "fog_like": (_fog_like, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
}
GENERATED: tuple[str, ...] = tuple(_CORRUPTIONS)
_COLOUR_ONLY = ("saturate",)
GENERATED_NOTE = ("generated by advrep (its re-implementation of the CIFAR-10-C corruptions, not the "
                  "official files): comparable across advrep runs, not to published CIFAR-10-C numbers")


def available(channels: int) -> list[str]:
    """The generated corruptions that apply to images with ``channels`` channels (1 or 3)."""
    if channels not in (1, 3):
        raise ConfigError(f"corruptions need 1 or 3 channels, got {channels}")
    return [n for n in GENERATED if channels == 3 or n not in _COLOUR_ONLY]


def _check_name(name: str, channels: int) -> None:
    names = available(channels)
    if name not in names:
        problem = f"'{name}' needs 3 channels" if name in GENERATED else f"unknown corruption '{name}'"
        raise ConfigError(f"{problem}; for {channels}-channel images choose from: {', '.join(names)}")


def _check_severity(severity) -> None:
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1, 2, 3, 4, 5, got {severity!r}")


def generate(x: torch.Tensor, name: str, severity: int, *, generator: torch.Generator) -> torch.Tensor:
    """``x`` (float, [0, 1], (N, C, H, W), C = 1 or 3) corrupted by ``name`` at ``severity``.

    Same shape, device and dtype, in [0, 1]; the randomness comes from ``generator`` only,
    which must live on ``x``'s device (``torch.Generator(device=x.device)``). Computed in at
    least fp32."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(f"corruptions take float images (N, C, H, W) in [0, 1], got {x.dtype} "
                          f"{tuple(x.shape)}; convert uint8 with x.float() / 255")
    _check_name(name, x.shape[1])
    _check_severity(severity)
    if torch.device(generator.device) != x.device:
        raise ConfigError(f"the generator is on {generator.device} but the images on {x.device}; "
                          "create it with torch.Generator(device=x.device)")
    fn, params = _CORRUPTIONS[name]
    return fn(fp32(x), params[severity - 1], generator).clamp(0, 1).to(x.dtype)


# ----------------------------------------------------------------- official files


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


# ----------------------------------------------------------------------- evaluate


def _cell_seed(seed: int, name: str, severity: int) -> int:
    """A seed per (corruption, severity), so a cell's images do not depend on which others ran."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 7 + severity) % (2 ** 63)


def _official_cells(directory, x, y, names, severities, device):
    """The corruptions chosen, and (name, severity, images, labels, None) per cell, one read per file."""
    n = len(x)
    labels, files, per, _ = _official(directory, n)
    known = {p.stem: p for p in files}
    for name in names or ():
        if name not in known:
            raise ConfigError(f"no {name}.npy in {directory}; choose from: {', '.join(known)}")
    mismatch = int((torch.from_numpy(labels[:n].astype(np.int64)) != y.cpu()).sum())
    if mismatch:
        raise DataError(f"{Path(directory) / 'labels.npy'}: {mismatch} of the first {n} labels differ from "
                        "the test labels; the folder holds another dataset's corruptions, or the test "
                        "images are not the first N in official order")
    chosen = names or list(known)

    def cells():
        for name in chosen:
            blocks = _read_official(known[name], labels, n)
            if blocks.shape[2:] != x.shape[1:]:
                raise DataError(f"{known[name]} holds images {blocks.shape[2:]}, the test images are "
                                f"{tuple(x.shape[1:])}; use the corruption files of the evaluated dataset")
            for s in severities:
                ys = torch.from_numpy(labels[(s - 1) * per:(s - 1) * per + n].astype(np.int64))
                yield name, s, torch.from_numpy(blocks[s - 1]).to(device), ys.to(device), None

    return chosen, cells()


def _generated_cells(x, y, names, severities, device, seed):
    x, y = x.to(device), y.to(device)  # uint8 on the device; each batch is corrupted there
    for name in names:
        for s in severities:
            gen = torch.Generator(device=x.device).manual_seed(_cell_seed(seed, name, s))
            yield name, s, x, y, partial(generate, name=name, severity=s, generator=gen)


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, device, directory=None, names=None,
             severities=SEVERITIES, batch_size: int = 500, progress: bool = True, seed: int = 0) -> dict:
    """Accuracy of ``model`` under common corruptions, in eval mode without gradients.

    ``x`` uint8 (N, C, H, W) clean test images and ``y`` their labels. With ``directory``, the
    official files there are used (their own first N images per severity; their labels.npy must
    agree with ``y``); otherwise the generated corruptions for C channels (or ``names``) are
    applied to ``x`` on ``device``, deterministically given ``seed`` and ``batch_size``.

    Returns ``{"source": "official" | "generated", "note", "per_corruption": {name: {"1": acc,
    ..., "5": acc, "mean": acc}}, "per_severity": {"1": mean over corruptions, ...}, "mean",
    "n": images per cell}``."""
    severities = tuple(severities)
    for s in severities:
        _check_severity(s)
    if len(x) == 0 or not severities or (names is not None and not list(names)):
        raise ConfigError("corruption evaluation needs at least one image, severity and corruption")
    n = len(x)
    if directory is not None:
        chosen, cells = _official_cells(directory, x, y, names and list(names), severities, device)
        source, note = "official", f"the official corruption files in {directory}"
    else:
        chosen = available(x.shape[1]) if names is None else list(names)
        for name in chosen:
            _check_name(name, x.shape[1])
        cells = _generated_cells(x, y, chosen, severities, device, seed)
        source, note = "generated", GENERATED_NOTE
    total = len(chosen) * len(severities) * math.ceil(n / batch_size)
    acc: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=total, desc="corruptions", disable=None if progress else True,
                                   leave=False) as bar:
            for name, s, xs, ys, transform in cells:
                correct = torch.zeros((), dtype=torch.long, device=xs.device)
                for start in range(0, n, batch_size):
                    xb = xs[start:start + batch_size].float().div(255)
                    xb = xb if transform is None else transform(xb)
                    correct += (model(xb).argmax(1) == ys[start:start + batch_size]).sum()
                    bar.update()
                acc.setdefault(name, {})[str(s)] = int(correct) / n  # one host sync per cell
    finally:
        model.train(was_training)
    for row in acc.values():
        row["mean"] = sum(row[str(s)] for s in severities) / len(severities)
    per_severity = {str(s): sum(row[str(s)] for row in acc.values()) / len(acc) for s in severities}
    return {"source": source, "note": note, "per_corruption": acc, "per_severity": per_severity,
            "mean": sum(per_severity.values()) / len(per_severity), "n": n}
