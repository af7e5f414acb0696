"""The official dataset files (where to get them, their md5s) and a download that never
leaves a partial file under its final name.

``$ADVREP_MIRROR`` (a base URL, e.g. ``https://mirror.example.org/advrep/``) replaces the
official URLs: every file is then fetched from ``<mirror>/<dataset>/<file name>`` only (for
example ``<mirror>/mnist/train-images-idx3-ubyte.gz``). A mirror changes where the bytes
come from, never what they must be: they are checked against the md5s of this table.

``OFFICIAL`` is consulted at call time, so tests can monkeypatch URLs and md5s.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from ..errors import DataError

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Remote:
    """One published file. ``urls`` is empty for an archive member: it comes from ``archive``."""

    name: str
    md5: str
    urls: tuple[str, ...] = ()
    archive: str | None = None


def _table(*entries: Remote) -> dict[str, Remote]:
    return {e.name: e for e in entries}


def _idx_files(bases: tuple[str, ...], md5s: dict[str, str]) -> dict[str, Remote]:
    # Only the .gz files have published md5s; an uncompressed IDX file gets structural
    # checks only (magic number, dtype code, byte size against the declared dims).
    return _table(*(Remote(f"{stem}.gz", md5, tuple(f"{b}{stem}.gz" for b in bases))
                    for stem, md5 in md5s.items()))


_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_CS231N = "http://cs231n.stanford.edu/"

# dataset -> file name -> Remote
OFFICIAL: dict[str, dict[str, Remote]] = {
    "cifar10": _table(
        Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
               (_KRIZ + "cifar-10-python.tar.gz",)),
        *(Remote(name, md5, archive="cifar-10-python.tar.gz") for name, md5 in {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        }.items()),
    ),
    "cifar100": _table(
        Remote("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
               (_KRIZ + "cifar-100-python.tar.gz",)),
        Remote("train", "16019d7e3df5f24257cddd939b257f8d", archive="cifar-100-python.tar.gz"),
        Remote("test", "f0ef6b0ae62326f3e7ffdfab6717acfc", archive="cifar-100-python.tar.gz"),
    ),
    "svhn": _table(
        Remote("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", (_SVHN + "train_32x32.mat",)),
        Remote("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", (_SVHN + "test_32x32.mat",)),
    ),
    "mnist": _idx_files(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        }),
    "fashion-mnist": _idx_files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        }),
    "tiny-imagenet": _table(  # 248,100,043 bytes
        Remote("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", (_CS231N + "tiny-imagenet-200.zip",)),
    ),
}


def remote(dataset: str, name: str) -> Remote | None:
    """The table's entry for ``name`` of ``dataset``, or None if it has no md5 to check;
    with ``$ADVREP_MIRROR`` set, a downloadable entry's URL is the mirror's."""
    entry = OFFICIAL.get(dataset, {}).get(name)
    mirror = os.environ.get("ADVREP_MIRROR")
    if entry is None or not entry.urls or not mirror:
        return entry
    return replace(entry, urls=(f"{mirror.rstrip('/')}/{dataset}/{name}",))


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(entry: Remote, dest: Path, progress: bool = True) -> None:
    """Download ``entry`` to ``dest``, trying each URL in order.

    Bytes go to ``<dest>.part`` and are hashed on the way; only a file whose md5 matches is
    renamed to ``dest``, so an interrupted or corrupt download never looks complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problems = []
    for url in entry.urls:
        try:
            got = _stream(url, part, dest.name, progress)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            problems.append(f"{url} failed ({getattr(e, 'reason', e)})")
            continue
        if got == entry.md5:
            os.replace(part, dest)
            return
        part.unlink()
        problems.append(f"{url} gave md5 {got}, expected {entry.md5}")
    part.unlink(missing_ok=True)
    raise DataError(f"could not download {dest}: {'; '.join(problems) or 'no URL known'}; "
                    "retry later, or pass --data-dir to a folder that holds the files")


def _stream(url: str, part: Path, label: str, progress: bool) -> str:
    """Write ``url`` to ``part`` in 1 MiB chunks with a progress bar; return its md5."""
    request = urllib.request.Request(url, headers={"User-Agent": f"advrep/{__version__}"})
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=label, disable=not progress, leave=False) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return h.hexdigest()
