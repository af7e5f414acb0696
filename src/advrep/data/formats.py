"""Readers for the on-disk formats: files in, validated numpy arrays out.

Every reader turns a malformed, truncated or hostile file into a one-line DataError naming
the file, so a bad download never surfaces as a numpy or pickle traceback. Images come out
as uint8 NCHW except :func:`read_npz`, which keeps the file's NHWC/NHW for one fast permute.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import pickle
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError


def _corrupt(path: Path, problem: str) -> DataError:
    return DataError(f"{path} is corrupt or truncated ({problem}); delete it and download "
                     "or copy it again")


# ------------------------------------------------------------------------------ npz


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (uint8, NHWC or NHW) and ``y`` (integer, N) of one npz file."""
    try:
        f = np.load(path)
        if not hasattr(f, "files"):  # a bare .npy array, not an npz archive
            raise DataError(f"{path} is not an npz archive; write it with np.savez(path, x=images, y=labels)")
        with f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise DataError(f"{path} has no key {sorted(missing)[0]!r} (keys: {', '.join(f.files)}); "
                                "write it with np.savez(path, x=images, y=labels)")
            x, y = f["x"], f["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or y.ndim != 1 or y.dtype.kind not in "iu" \
            or len(x) != len(y):
        raise DataError(f"{path} holds x {x.dtype} {x.shape} and y {y.dtype} {y.shape}; expected x "
                        "uint8 (N, H, W[, C]) and y integer (N,)")
    return x, y


# --------------------------------------------------------------------- CIFAR pickles

# The only globals numpy needs to rebuild an array (numpy 2 moved numpy.core to numpy._core).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _Unpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays, refuses every other global (no code runs)."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise DataError(f"refusing to unpickle {module}.{name} from {self.path}; "
                            "the official CIFAR files hold only arrays and lists, replace this one")
        # numpy 2 first (its numpy.core shim warns), then numpy 1's spelling
        for candidate in (module.replace("numpy.core", "numpy._core"),
                          module.replace("numpy._core", "numpy.core")):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise DataError(f"{self.path} needs {module}.{name}, which this numpy lacks; "
                        "install a numpy that has it")


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One official CIFAR pickle: rows of 3072 bytes (R, G, B planes) -> (N, 3, 32, 32)."""
    try:
        with open(path, "rb") as f:
            batch = _Unpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # a broken pickle can fail in many ways; all mean a bad file
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or labels is None or len(labels) != len(data):
        raise DataError(f"{path} is not a CIFAR batch (want a dict with b'data' uint8 (N, 3072) and "
                        f"{label_key!r} of N labels); delete it and download again")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, ``..`` and links."""
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                target = (root / m.name).resolve()
                if PurePosixPath(m.name).is_absolute() or ".." in PurePosixPath(m.name).parts \
                        or root not in (target, *target.parents) or not (m.isfile() or m.isdir()):
                    raise DataError(f"refusing to extract {m.name!r} from {archive}: only plain files "
                                    "inside the folder are allowed; delete the archive and download again")
            for m in members:
                target = root / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                with tar.extractfile(m) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(part, target)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(archive, f"{type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------- MNIST IDX

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or .gz): 0, 0, dtype code, ndim, big-endian uint32 dims, data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (magic {raw[:4].hex()}); delete it and download again")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    expected = start + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise _corrupt(path, f"{len(raw)} bytes, but its header {dims} needs {expected}")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


# ------------------------------------------------------------------------ MATLAB v5

_MI_INT8, _MI_UINT32, _MI_INT32, _MI_MATRIX, _MI_COMPRESSED = 1, 6, 5, 14, 15
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MX_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4",
               14: "i8", 15: "u8"}
_MX_COMPLEX = 0x800


class _MatReader:
    """Walks the data elements of a MAT v5 file held in memory."""

    def __init__(self, path: Path):
        self.path = path
        data = path.read_bytes()
        if len(data) < 128:
            raise _corrupt(path, "shorter than the 128-byte MAT header")
        self.order = {b"IM": "little", b"MI": "big"}.get(data[126:128])
        if self.order is None or not data.startswith(b"MATLAB"):
            raise DataError(f"{path} is not a MATLAB 5 MAT-file; delete it and download again")
        version = int.from_bytes(data[124:126], self.order)
        if version != 0x0100:
            raise DataError(f"{path} is MAT version {version:#06x}, not 5 (0x0100); re-save it with "
                            "MATLAB's -v7 option or download the official file")
        self.data = memoryview(data)
        self.endian = "<" if self.order == "little" else ">"

    def tag(self, buf: memoryview, pos: int, pad: bool) -> tuple[int, memoryview, int]:
        """(type, body, next position) of the element at ``pos``."""
        if pos + 8 > len(buf):
            raise _corrupt(self.path, f"data element at byte {pos} is cut off")
        word = int.from_bytes(buf[pos:pos + 4], self.order)
        if word >> 16:  # small data element: 2-byte size and type, up to 4 bytes of data
            size = word >> 16
            if size > 4:
                raise _corrupt(self.path, f"small data element of {size} bytes")
            return word & 0xFFFF, buf[pos + 4:pos + 4 + size], pos + 8
        size = int.from_bytes(buf[pos + 4:pos + 8], self.order)
        start = pos + 8
        if start + size > len(buf):
            raise _corrupt(self.path, f"data element at byte {pos} needs {size} bytes, "
                                      f"{len(buf) - start} left")
        return word, buf[start:start + size], start + (-(-size // 8) * 8 if pad else size)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        pos = 128
        while pos < len(self.data):
            kind, body, pos = self.tag(self.data, pos, pad=False)
            if kind == _MI_COMPRESSED:
                try:
                    inner = memoryview(zlib.decompress(body))
                except zlib.error as e:
                    raise _corrupt(self.path, f"zlib: {e}") from None
                kind, body, _ = self.tag(inner, 0, pad=False)
            if kind == _MI_MATRIX:
                name, array = self.matrix(body)
                if array is not None:
                    out[name] = array
        return out

    def matrix(self, body: memoryview) -> tuple[str, np.ndarray | None]:
        """(name, array) of an miMATRIX; the array is None unless it is real and numeric."""
        parts, pos = [], 0
        while pos < len(body) and len(parts) < 4:
            kind, part, pos = self.tag(body, pos, pad=True)
            parts.append((kind, part))
        if len(parts) < 3 or [k for k, _ in parts[:3]] != [_MI_UINT32, _MI_INT32, _MI_INT8] \
                or len(parts[0][1]) != 8 or len(parts[1][1]) % 4:
            raise _corrupt(self.path, "miMATRIX without flags, dimensions and name")
        flags = int.from_bytes(parts[0][1][:4], self.order)
        dims = tuple(int(d) for d in np.frombuffer(parts[1][1], self.endian + "i4"))
        name = bytes(parts[2][1]).decode("ascii", "replace")
        cls = flags & 0xFF
        if cls not in _MX_NUMERIC or flags & _MX_COMPLEX:
            return name, None
        if len(parts) < 4 or parts[3][0] not in _MI_TYPES:
            raise _corrupt(self.path, f"variable {name!r} has no numeric data")
        kind, real = parts[3]
        stored = np.dtype(self.endian + _MI_TYPES[kind])
        if min(dims, default=0) < 0 or len(real) != math.prod(dims) * stored.itemsize:
            raise _corrupt(self.path, f"variable {name!r} holds {len(real)} bytes for shape {dims}")
        # The stored type may be narrower than the class (MATLAB saves small doubles as uint8).
        values = np.frombuffer(real, stored).astype(_MX_NUMERIC[cls], copy=False)
        return name, values.reshape(dims, order="F")


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """The real numeric variables of a MATLAB v5 file (compressed or not), by name."""
    return _MatReader(path).arrays()


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An official SVHN file: ``X`` (32, 32, 3, N) -> (N, 3, 32, 32); label 10 is digit 0."""
    arrays = read_mat(path)
    x, y = arrays.get("X"), arrays.get("y")
    if x is None or y is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) \
            or y.size != x.shape[3]:
        raise DataError(f"{path} is not an SVHN file (want X uint8 (32, 32, 3, N) and y of N labels, "
                        f"found {', '.join(arrays) or 'no numeric variables'}); delete it and download again")
    y = y.reshape(-1).astype(np.int64)
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y
