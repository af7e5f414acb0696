"""Tiny-ImageNet (cs231n, Stanford): 64×64 colour images of 200 ImageNet classes, 500 training
and 50 validation images per class. The validation split is advrep's test split (the official
test images have no labels); its labels come from ``val/val_annotations.txt``.

Official archive ``tiny-imagenet-200.zip`` (md5 in :mod:`.download`), or the folder it extracts
to, laid out as::

    tiny-imagenet-200/wnids.txt                      one WordNet id per class
    tiny-imagenet-200/train/<wnid>/images/*.JPEG
    tiny-imagenet-200/val/images/*.JPEG
    tiny-imagenet-200/val/val_annotations.txt        <file>\\t<wnid>\\t<box>...

Class ``k`` is the ``k``-th WordNet id in sorted order (as ImageFolder and the ANCRA code number
them). Decoding 110,000 JPEGs (Pillow) takes minutes, so the arrays are cached beside the archive
as ``tiny-imagenet-200.npz`` and read from there afterwards; delete it to decode again.
"""

from __future__ import annotations

import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError

ARCHIVE = "tiny-imagenet-200.zip"
ROOT = "tiny-imagenet-200"
CACHE = "tiny-imagenet-200.npz"
SIZE = 64


class _Files:
    """Names relative to ``tiny-imagenet-200/`` and their bytes, from the zip or the folder."""

    def __init__(self, source: Path):
        self.source = source
        if source.suffix == ".zip":
            try:
                self._zip = zipfile.ZipFile(source)
            except (OSError, zipfile.BadZipFile) as e:
                raise DataError(f"{source} is not a readable zip ({e}); delete it and download again") from None
            prefix = f"{ROOT}/"
            self.names = sorted(n[len(prefix):] for n in self._zip.namelist() if n.startswith(prefix))
            self.read = lambda name: self._zip.read(prefix + name)
        else:
            self.names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
            self.read = lambda name: (source / name).read_bytes()

    def text(self, name: str) -> list[str]:
        if name not in set(self.names):
            raise DataError(f"{self.source} has no {ROOT}/{name}; it is not the official Tiny-ImageNet layout")
        return self.read(name).decode().splitlines()


def _decode(files: _Files, names: list[str]) -> np.ndarray:
    """uint8 (N, 3, 64, 64) from the JPEGs ``names``; grayscale ones become RGB."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    def one(name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(files.read(name))) as img:
                pixels = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{files.source}: {ROOT}/{name} is not a readable JPEG ({e})") from None
        if pixels.shape != (SIZE, SIZE, 3):
            raise DataError(f"{files.source}: {ROOT}/{name} is {pixels.shape[1]}x{pixels.shape[0]}, "
                            f"Tiny-ImageNet images are {SIZE}x{SIZE}")
        return pixels

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        images = list(pool.map(one, names))
    return np.stack(images).transpose(0, 3, 1, 2).copy() if images else np.zeros((0, 3, SIZE, SIZE), np.uint8)


def decode(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_val, y_val)`` from the official zip or extracted folder."""
    files = _Files(source)
    wnids = sorted({w.strip() for w in files.text("wnids.txt") if w.strip()})
    label = {w: k for k, w in enumerate(wnids)}
    train = []
    for name in files.names:
        parts = PurePosixPath(name).parts  # train/<wnid>/images/<file>.JPEG
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and name.endswith(".JPEG"):
            if parts[1] not in label:
                raise DataError(f"{source}: {ROOT}/train/{parts[1]} is not a class of wnids.txt")
            train.append((name, label[parts[1]]))
    if not train:
        raise DataError(f"{source} has no {ROOT}/train/<wnid>/images/*.JPEG; it is not the official "
                        "Tiny-ImageNet layout")
    val = []
    for line in files.text("val/val_annotations.txt"):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label:
            raise DataError(f"{source}: {ROOT}/val/val_annotations.txt has a line {line!r} that names no "
                            f"class of wnids.txt")
        val.append((f"val/images/{fields[0]}", label[fields[1]]))
    missing = sorted({n for n, _ in val} - set(files.names))
    if missing:
        raise DataError(f"{source}: {ROOT}/{missing[0]} is listed in val_annotations.txt but missing "
                        f"({len(missing)} in all)")
    out = []
    for split in (train, val):
        out += [_decode(files, [n for n, _ in split]), np.array([k for _, k in split], dtype=np.int64)]
    return tuple(out)


def _read_cache(path: Path):
    try:
        with np.load(path) as f:
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} (advrep's decoded copy) is unreadable ({type(e).__name__}); delete it "
                        "to decode the archive again") from None


def _write_cache(path: Path, arrays) -> None:
    """Best effort (a read-only folder just decodes again next time); renamed into place, so a
    half-written cache never exists under its name."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays)))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def reader(place) -> tuple:
    """The registry's reader (``data._Place`` in, ``(x_train, y_train, x_test, y_test, where)``
    out): the cached arrays, else the extracted folder, else the archive (checked, downloaded
    into the cache when allowed)."""
    cache = place.folder / CACHE
    if cache.is_file():
        return (*_read_cache(cache), cache)
    source = place.folder / ROOT
    if not source.is_dir():
        source = place.folder / ARCHIVE
        place.need(source)
    arrays = decode(source)
    _write_cache(cache, arrays)
    return (*arrays, source)

