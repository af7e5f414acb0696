"""Datasets: what each one is (:class:`DatasetInfo`) and :func:`load`, which finds its files.

``load`` reads a folder of ``train*.npz`` + ``test.npz`` for any dataset, or the official
files (CIFAR pickles or their tar.gz, SVHN .mat, MNIST IDX). Without ``data_dir`` it uses
advrep's cache, downloading what is missing; with ``data_dir`` it only reads. Official
files are checked against their published md5 wherever they are found.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import Registry
from . import download as dl
from . import formats, tiny_imagenet

__all__ = ["DATASETS", "DatasetInfo", "Dataset", "Splits", "cache_dir", "load"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int  # square images
    mean: tuple[float, ...]  # per channel, for inputs in [0, 1]
    std: tuple[float, ...]
    family: str  # "cifar" or "mnist": picks the default threat model
    augment: str  # default training augmentation: "crop-flip", "crop" or "none"
    classes: tuple[str, ...] | None = None


@dataclass
class Splits:
    info: DatasetInfo
    x_train: torch.Tensor = field(repr=False)  # uint8 (N, C, H, W), contiguous, CPU
    y_train: torch.Tensor = field(repr=False)  # int64 (N,)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    source: str  # the folder it came from and its layout, "(npz)" or "(official)"


def cache_dir() -> Path:
    """``$ADVREP_DATA`` or ``~/.cache/advrep``; each dataset lives in ``cache_dir()/<name>``."""
    env = os.environ.get("ADVREP_DATA")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "advrep"
    if path.exists() and not path.is_dir():
        raise DataError(f"the data cache {path} is a file, not a folder; "
                        + ("point ADVREP_DATA at a folder" if env else "set ADVREP_DATA to a folder"))
    return path


# ------------------------------------------------------------------- where files are


@dataclass
class _Place:
    """A folder to read, and whether it is advrep's cache (where bad files may be replaced)."""

    dataset: str
    folder: Path
    cached: bool
    download: bool
    progress: bool

    @property
    def may_download(self) -> bool:
        return self.cached and self.download

    @property
    def hint(self) -> str:
        if self.cached:
            return "allow downloading, or pass --data-dir to a folder that holds the files"
        return "pass --data-dir to a folder that holds the complete files, or leave it out to download"

    def check(self, path: Path, repair: bool = True) -> bool:
        """Whether ``path`` exists and matches its md5 in the table, if the table has one.

        A mismatch in the cache (advrep's own download) deletes the file and returns False so
        the caller fetches it again; a mismatch anywhere else is the user's to fix.
        """
        if not path.is_file():
            return False
        entry = dl.remote(self.dataset, path.name)
        if entry is None:
            return True
        got = dl.md5sum(path)
        if got == entry.md5:
            return True
        problem = f"{path} is corrupt or partial: md5 {got}, expected {entry.md5}"
        if repair and self.may_download:
            log.warning("%s; replacing it", problem)
            path.unlink()
            return False
        raise DataError(f"{problem}; delete it and download again")

    def need(self, path: Path) -> None:
        """Make sure the checked official file ``path`` is there, downloading it if allowed."""
        if self.check(path):
            return
        entry = dl.remote(self.dataset, path.name)
        if not self.may_download or entry is None or not entry.urls:
            raise DataError(f"{path} is missing; {self.hint}")
        dl.fetch(entry, path, self.progress)


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Path]


def _cifar(dirname: str, archive: str, train: tuple[str, ...], test: str, label_key: bytes):
    def read(place: _Place) -> Arrays:
        batches = place.folder / dirname
        paths = [batches / name for name in (*train, test)]
        if not all([place.check(p) for p in paths]):  # a list: check (and repair) every file
            tar = place.folder / archive
            if not tar.is_file() and not place.may_download:
                missing = next(p for p in paths if not p.is_file())
                raise DataError(f"{missing} is missing and there is no {tar} to extract it from; "
                                f"{place.hint}")
            place.need(tar)
            formats.extract_tar(tar, place.folder)
            for p in paths:
                if not place.check(p, repair=False):
                    raise DataError(f"{tar} has no {dirname}/{p.name}; delete it and download again")
        parts = [formats.read_cifar_batch(p, label_key) for p in paths]
        x_train = np.concatenate([x for x, _ in parts[:-1]])
        y_train = np.concatenate([y for _, y in parts[:-1]])
        return x_train, y_train, *parts[-1], batches

    return read


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(*subdirs: str):
    def find(place: _Place, stem: str) -> Path:
        for sub in subdirs:
            for path in (place.folder / sub / f"{stem}.gz", place.folder / sub / stem):
                if place.check(path):
                    return path
        path = place.folder / f"{stem}.gz"
        if not place.may_download:
            raise DataError(f"no {stem}[.gz] in {place.folder} or its {', '.join(subdirs[1:])}; "
                            f"{place.hint}")
        place.need(path)
        return path

    def read(place: _Place) -> Arrays:
        paths = [find(place, stem) for stem in _IDX]
        out = []
        for images, labels in (paths[:2], paths[2:]):
            x, y = formats.read_idx(images), formats.read_idx(labels)
            if x.dtype != np.uint8 or x.ndim != 3:
                raise DataError(f"{images} holds {x.dtype} {x.shape}, not uint8 images (N, H, W); "
                                "delete it and download again")
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(f"{labels} holds {y.shape} labels for {len(x)} images in {images}; "
                                "delete it and download again")
            out += [x[:, None], y.astype(np.int64)]
        return *out, paths[0].parent

    return read


def _svhn(place: _Place) -> Arrays:
    out = []
    for split in ("train", "test"):
        path = place.folder / f"{split}_32x32.mat"
        place.need(path)
        out += formats.read_svhn(path)
    return *out, place.folder


# ---------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Dataset:
    """A registry entry: the dataset's facts and where its official files are."""

    info: DatasetInfo | None  # None: inferred from the files (the "npz" dataset)
    expected: str  # the layouts looked for, for error messages
    markers: tuple[str, ...] = ()  # any of these present means the official layout is there
    read_official: Callable[[_Place], Arrays] | None = None


DATASETS: Registry[Dataset] = Registry("dataset")

_NPZ = "train*.npz + test.npz"
_CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())
_DIGITS = tuple("0123456789")


def _idx_markers(*subdirs: str) -> tuple[str, ...]:
    return tuple(f"{sub}/{stem}{gz}".lstrip("/") for sub in subdirs for stem in _IDX for gz in ("", ".gz"))


DATASETS.register("cifar10")(Dataset(
    DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar",
                "crop-flip", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")),
    f"{_NPZ}, cifar-10-batches-py/ or cifar-10-python.tar.gz",
    ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    _cifar("cifar-10-batches-py", "cifar-10-python.tar.gz",
           tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels"),
))
DATASETS.register("cifar100")(Dataset(
    DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar",
                "crop-flip", _CIFAR100_CLASSES),
    f"{_NPZ}, cifar-100-python/ or cifar-100-python.tar.gz",
    ("cifar-100-python", "cifar-100-python.tar.gz"),
    _cifar("cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", b"fine_labels"),
))
DATASETS.register("svhn")(Dataset(
    # digits: a flipped 2 is not a 2, so no default augmentation
    DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "cifar",
                "none", _DIGITS),
    f"{_NPZ} or train_32x32.mat + test_32x32.mat",
    ("train_32x32.mat", "test_32x32.mat"),
    _svhn,
))
DATASETS.register("mnist")(Dataset(
    DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), "mnist", "none", _DIGITS),
    f"{_NPZ} or the four IDX files ({_IDX[0]}[.gz], ...) here, in raw/ or in MNIST/raw/",
    _idx_markers("", "raw", "MNIST/raw"),
    _idx("", "raw", "MNIST/raw"),
))
DATASETS.register("fashion-mnist")(Dataset(
    DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), "mnist", "none",
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")),
    f"{_NPZ} or the four IDX files ({_IDX[0]}[.gz], ...) here, in raw/ or in FashionMNIST/raw/",
    _idx_markers("", "raw", "FashionMNIST/raw"),
    _idx("", "raw", "FashionMNIST/raw"),
))
DATASETS.register("tiny-imagenet")(Dataset(
    # the widely used training-set statistics; 64x64, so the CIFAR-family threat model
    DatasetInfo("tiny-imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), "cifar",
                "crop-flip"),
    f"{_NPZ}, {tiny_imagenet.ROOT}/ or {tiny_imagenet.ARCHIVE} (official layout)",
    (tiny_imagenet.CACHE, tiny_imagenet.ROOT, tiny_imagenet.ARCHIVE),
    tiny_imagenet.reader,
))
DATASETS.register("npz")(Dataset(None, _NPZ))


# -------------------------------------------------------------------------- loading


def info(name: str) -> DatasetInfo:
    """The registered facts of dataset ``name`` (not available for ``npz``: read from files)."""
    found = DATASETS.get(name).info
    if found is None:
        raise ConfigError(f"dataset '{name}' has no fixed statistics; they come from its files")
    return found


def load(name: str, data_dir: str | Path | None = None, download: bool = True,
         progress: bool = True) -> Splits:
    """The train and test split of dataset ``name``.

    ``data_dir`` None: ``cache_dir()/<name>``, downloading the official files if they are
    missing and ``download`` is true. ``data_dir`` given: read only that folder.
    """
    spec = DATASETS.get(name)
    cached = data_dir is None
    folder = cache_dir() / name if cached else Path(data_dir).expanduser()
    if not cached and not folder.is_dir():
        raise DataError(f"data directory {folder} does not exist; pass --data-dir to a folder with "
                        f"the {name} files, or leave it out to use the download cache")
    npz = _npz_files(folder)
    if npz:
        return _checked(_load_npz(spec, *npz), npz[1].parent, inferred=spec.info is None)
    place = _Place(name, folder, cached, download, progress)
    if spec.read_official and (place.may_download or any((folder / m).exists() for m in spec.markers)):
        try:
            x_train, y_train, x_test, y_test, where = spec.read_official(place)
        except OSError as e:  # not a corrupt file (those are DataErrors): the cache cannot be written
            raise DataError(f"cannot write to the data cache {folder} ({e.strerror or e}); set ADVREP_DATA to a "
                            "writable folder or pass --data-dir") from None
        for x, y in ((x_train, y_train), (x_test, y_test)):
            _fit(spec.info, x.shape[1:], y, where)
        return _checked(Splits(spec.info, torch.from_numpy(x_train), torch.from_numpy(y_train),
                               torch.from_numpy(x_test), torch.from_numpy(y_test), f"{where} (official)"), where)
    fix = place.hint if spec.read_official else "pass --data-dir to a folder that holds them"
    raise DataError(f"no {name} data in {folder}: expected {spec.expected}; {fix}")


def _checked(splits: Splits, where: Path, inferred: bool = False) -> Splits:
    """The splits, once their counts and labels agree with each other and with the dataset
    (``inferred``: the class count was read from the training labels, so a test label must be
    one of them)."""
    for split, x, y in (("training", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        if len(x) == 0:
            raise DataError(f"the {split} split in {where} holds no images; pass a folder with the whole dataset")
        if len(x) != len(y):
            raise DataError(f"the {split} split in {where} has {len(x)} images but {len(y)} labels")
    k = splits.info.num_classes
    seen_train = set(torch.unique(splits.y_train).tolist())
    if len(seen_train) < 2:
        raise DataError(f"the training split in {where} has only label {min(seen_train)}; a classifier needs "
                        "images of at least two classes")
    if min(seen_train) < 0 or max(seen_train) >= k:
        bad = max(seen_train) if max(seen_train) >= k else min(seen_train)
        raise DataError(f"the training split in {where} has label {bad}, outside the {k} classes 0..{k - 1} "
                        f"of {splits.info.name}")
    unseen = sorted(set(torch.unique(splits.y_test).tolist()) - (seen_train if inferred else set(range(k))))
    if unseen and not inferred:
        raise DataError(f"the test split in {where} has label {unseen[0]}, outside the {k} classes 0..{k - 1} "
                        f"of {splits.info.name}")
    if unseen:
        raise DataError(f"the test split in {where} has label {unseen[0]}, which no training image has; the "
                        "training labels decide the classes (pass matching train and test files)")
    return splits


def _natural(path: Path) -> list:
    """Sort key putting train-2 before train-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _npz_files(folder: Path) -> tuple[list[Path], Path] | None:
    train = sorted(folder.glob("train*.npz"), key=_natural) if folder.is_dir() else []
    test = folder / "test.npz"
    if not train and not test.is_file():
        return None
    if not train or not test.is_file():
        raise DataError(f"{folder} has {'train' if train else 'test'} npz files but no "
                        f"{'test.npz' if train else 'train*.npz'}; an npz folder needs train.npz "
                        "(or train-1.npz, train-2.npz, ...) and test.npz")
    return train, test


def _fit(info: DatasetInfo | None, chw: tuple[int, ...], y: np.ndarray, path: Path) -> None:
    """Raise if images of shape ``chw`` and labels ``y`` read from ``path`` do not fit ``info``."""
    c, h, w = chw
    if info is not None and (c, h, w) != (info.channels, info.image_size, info.image_size):
        raise DataError(f"{path} holds {h}x{w} images with {c} channel(s), but {info.name} images "
                        f"are {info.image_size}x{info.image_size} with {info.channels}; pass the "
                        f"folder that holds {info.name} data")
    if h != w:
        raise DataError(f"{path} holds {h}x{w} images; advrep needs square images")
    if len(y) and y.min() < 0:
        raise DataError(f"{path} has label {y.min()}; labels must be class indices 0, 1, 2, ...")
    if info is not None and len(y) and y.max() >= info.num_classes:
        raise DataError(f"{path} has labels up to {y.max()}, but {info.name} has {info.num_classes} "
                        f"classes (0..{info.num_classes - 1}); pass the folder that holds {info.name} data")


def _load_npz(spec: Dataset, train: list[Path], test: Path) -> Splits:
    paths = (*train, test)
    with ThreadPoolExecutor() as pool:  # zlib releases the GIL: the files inflate in parallel
        parts = dict(zip(paths, pool.map(formats.read_npz, paths)))
    first = None
    for path, (x, y) in parts.items():
        chw = (x.shape[3] if x.ndim == 4 else 1, *x.shape[1:3])
        _fit(spec.info, chw, y, path)
        if first is not None and chw != first:
            raise DataError(f"{path} holds images of shape {chw} (C, H, W), {train[0]} of {first}; "
                            "every npz file of a dataset needs the same shape")
        first = chw
    x_train = np.concatenate([parts[p][0] for p in train]) if len(train) > 1 else parts[train[0]][0]
    y_train = np.concatenate([parts[p][1] for p in train]) if len(train) > 1 else parts[train[0]][1]
    x_test, y_test = parts[test]
    info = spec.info or _infer(x_train, y_train, y_test)
    return Splits(info, _nchw(x_train), torch.from_numpy(y_train.astype(np.int64)),
                  _nchw(x_test), torch.from_numpy(y_test.astype(np.int64)), f"{test.parent} (npz)")


def _nchw(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.unsqueeze(1) if x.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _infer(x: np.ndarray, y_train: np.ndarray, y_test: np.ndarray) -> DatasetInfo:
    """The "npz" dataset's info: shape from the images, mean/std from the train split."""
    c = x.shape[3] if x.ndim == 4 else 1
    total, squares = np.zeros(c), np.zeros(c)
    for i in range(0, len(x), 1024):  # exact int64 sums, in blocks to bound memory
        block = x[i:i + 1024].reshape(-1, c).astype(np.int64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    n = max(x.size // c, 1)
    mean = total / n / 255
    std = np.sqrt(np.maximum(squares / n / 255**2 - mean**2, 0))
    return DatasetInfo("npz", int(y_train.max(initial=0)) + 1, c,
                       x.shape[1], tuple(map(float, mean)), tuple(map(float, std)),
                       "mnist" if c == 1 else "cifar", "crop-flip" if c == 3 else "none")
