"""The few file operations advrep writes with, each atomic: what a reader sees is the old file
or the new one, never a part.

Every write of a run directory, a checkpoint or a report goes through these functions, so the
reliability tests (tests/test_reliability.py) can kill the process right before and right after
each one and show that nothing is lost. A write goes to a temporary sibling, is flushed to disk
(``fsync``) and renamed over the target; on an error the temporary file is removed and the
target is untouched. Errors a user can cause (a full disk, no permission) become one
:class:`~advrep.errors.StorageError` line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable

from .errors import StorageError

TMP_SUFFIX = ".tmp"
_rename = os.replace  # every commit of a write is this one call


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_of(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


@contextlib.contextmanager
def storage_errors(what: str):
    """Turn an OSError into a StorageError that names ``what`` and the cause."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"cannot write {what} ({e.strerror or e})") from None


def write_with(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``; on failure ``path`` is untouched."""
    path = Path(path)
    tmp = tmp_of(path)
    with storage_errors(path):
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(data))


def append_line(path: Path, line: str) -> None:
    """Append one line (a torn last line after a kill is the reader's to drop)."""
    with storage_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def link(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same file as ``src`` (a hard link; a copy where links are not
    supported), replacing ``dst`` atomically."""
    src, dst = Path(src), Path(dst)
    tmp = tmp_of(dst)
    with contextlib.suppress(OSError):
        if os.path.samefile(src, dst):
            return  # already that file (renaming a link over its twin would do nothing and keep tmp)
    with storage_errors(dst):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        try:
            _rename(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def remove(path: Path) -> None:
    with storage_errors(path), contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
