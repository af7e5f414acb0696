"""The run directory: one owner for opening a run, its checkpoints, metrics and reports.

Layout of ``RUN/`` (``advrep train`` writes it, every other command reads it through here)::

    config.yaml          the resolved config (first line marks the folder as an advrep run)
    metrics.jsonl        one row per finished epoch
    checkpoints/eNNNN.*  each epoch's checkpoint set: .safetensors (model), .optim.safetensors, .json,
                         and with --train.ema .ema.safetensors (the EMA network)
    checkpoints.json     the commit point: which set is ``last`` and which is ``best``
    last.*, best.*       the same files under their usual names (hard links, for other tools)
    report.json/.md      the evaluation
    .lock                held (flock) by the process writing the run

**The commit protocol.** At an epoch's end the metrics row is appended, the epoch's set is
written under new names, and then one atomic rename of ``checkpoints.json`` commits ``last``
and ``best`` together; only after that are the ``last.*``/``best.*`` names refreshed and the sets
no pointer names removed. So at every instant the directory holds one complete, consistent
checkpoint set per tag, and a process killed at any point loses at most the epoch in progress:
:meth:`Run.recover` (run by ``--resume``) drops what the pointer does not name (a half-written
set, metrics rows past the committed epoch, a torn last line) and re-makes the usual names.

**One writer.** :meth:`Run.lock` holds an exclusive ``flock`` on ``.lock`` while a process
writes the run; a second writer stops with one line naming the holder. The kernel releases
the lock when the holder dies, so a killed run is never locked for good.

**Provenance.** :func:`provenance` (advrep's version and, in a git checkout, the commit and
whether the tree was modified) goes into every checkpoint sidecar and report.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

from . import __version__, checkpoint, fileops
from . import config as config_mod
from .errors import CheckpointError, ConfigError, StorageError

POINTER = "checkpoints.json"
SETS = "checkpoints"
TAGS = ("last", "best")
MARKER = "# advrep run directory"
SUFFIXES = (".safetensors", ".optim.safetensors", ".ema.safetensors", ".json")


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """``{"advrep_version", "git_commit", "git_dirty"}`` of the code that is running (the git
    fields only when advrep runs from a git checkout)."""
    out = {"advrep_version": __version__}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                                    capture_output=True, text=True, timeout=10)
            out["git_commit"] = commit.stdout.strip()
            out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def is_run(path: Path) -> bool:
    """Whether ``path`` is an advrep run directory (new layout or one from before it)."""
    path = Path(path)
    if (path / POINTER).is_file():
        return True
    cfg = path / "config.yaml"
    if not cfg.is_file():
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            if f.readline().startswith(MARKER):
                return True
    except (OSError, UnicodeDecodeError):
        return False
    return (path / "metrics.jsonl").is_file()  # a run written before the marker existed


OWN_FILES = ("config.yaml", "metrics.jsonl", POINTER, "report.json", "report.md",
             *(f"{tag}{suffix}" for tag in TAGS for suffix in SUFFIXES))


def _own_tmp(path: Path) -> bool:
    """A temporary file advrep left in a run directory (never a user's own file)."""
    name = path.name.removesuffix(fileops.TMP_SUFFIX)
    return name != path.name and (name in OWN_FILES or name.endswith(".png"))


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a torn last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path} line {i + 1} is not JSON; the metrics log is damaged") from None
    return rows


class Run:
    """One run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------------ reading

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """An existing run directory, or one clear error."""
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a directory; pass an advrep run directory")
        if not is_run(path):
            raise ConfigError(f"{path} is not an advrep run directory (no config.yaml written by advrep)")
        return cls(path)

    def config(self, overrides=()):
        return config_mod.load(self.path / "config.yaml", list(overrides))

    def metrics(self) -> list[dict]:
        return read_metrics(self.path / "metrics.jsonl")

    def report(self) -> dict | None:
        path = self.path / "report.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path} is not valid JSON; run `advrep eval {self.path}` again") from None

    def pointer(self) -> dict | None:
        """The committed ``checkpoints.json`` (None for a run with no epoch committed, or one
        written before the commit protocol, whose ``last.*``/``best.*`` files are the sets)."""
        path = self.path / POINTER
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # cannot happen through rename; a damaged disk or a hand edit
            raise CheckpointError(f"{path} is damaged; the sets are in {self.path / SETS}") from None

    def checkpoint(self, tag: str) -> Path:
        """The stem (``…/checkpoints/e0005``) of the committed checkpoint set ``tag``."""
        if tag not in TAGS:
            raise ConfigError(f"unknown checkpoint '{tag}'; use one of: {', '.join(TAGS)}")
        pointer = self.pointer()
        if pointer is not None:
            return self.path / SETS / pointer[tag]
        if (self.path / f"{tag}.json").is_file():  # the layout before checkpoints.json
            return self.path / tag
        raise CheckpointError(f"{self.path} has no '{tag}' checkpoint yet"
                              + ("; try --checkpoint last" if tag == "best" else "; train it first"))

    def has_checkpoint(self, tag: str = "last") -> bool:
        try:
            self.checkpoint(tag)
        except CheckpointError:
            return False
        return True

    def epoch(self) -> int:
        """The last committed epoch (0 before the first)."""
        pointer = self.pointer()
        if pointer is not None:
            return pointer["epoch"]
        return checkpoint.read_meta(self.path / "last")["epoch"] if self.has_checkpoint() else 0

    # ------------------------------------------------------------------ writing

    def acquire(self) -> "Run":
        """Take the run's writer lock (held until :meth:`release` or the process ends); a second
        writer gets one StorageError line naming the holder. Re-entrant within one Run object."""
        if self._lock is not None:
            return self
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one writer is the user's to ensure
            return self
        with fileops.storage_errors(self.path / ".lock"):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StorageError(f"{self.path} is in use by {holder}; wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])})".encode(), 0)
        self._lock = weakref.finalize(self, os.close, fd)  # a Run that is dropped lets go of the lock
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock()  # closes the descriptor: releases the flock
            self._lock = None

    @contextlib.contextmanager
    def lock(self):
        """Hold the writer lock for the block (kept if it was already held)."""
        held = self._lock is not None
        self.acquire()
        try:
            yield self
        finally:
            if not held:
                self.release()

    @classmethod
    def create(cls, path: str | Path, cfg) -> "Run":
        """A new run directory for ``cfg`` (config.yaml, an empty metrics.jsonl), locked by this
        process, refusing a folder that holds a run with a checkpoint or files not advrep's."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file; pass a directory")
        run = cls(path)
        if path.is_dir() and run.has_checkpoint():
            raise ConfigError(f"{path} already holds a run; continue it with `advrep train --resume {path}` "
                              "or choose another --out")
        if path.is_dir() and not is_run(path) and any(p.name != ".lock" and not _own_tmp(p) for p in path.iterdir()):
            raise ConfigError(f"--out {path} is a folder with files that are not an advrep run; choose an empty "
                              "or new folder")
        run.acquire()
        if run.has_checkpoint():  # another process got there between the check and the lock
            run.release()
            raise ConfigError(f"{path} already holds a run; continue it with `advrep train --resume {path}`")
        run.write_config(cfg)
        run.recover()  # a start killed before its first commit leaves parts: they go, metrics start empty
        return run

    def write_config(self, cfg) -> None:
        config_mod.save(cfg, self.path / "config.yaml", header=f"{MARKER[2:]}: the resolved config (advrep {__version__})")

    def recover(self) -> int:
        """Make the directory what its last commit says, after a crash at any point: remove
        uncommitted sets and temporary files, drop metrics rows past the committed epoch (and a
        torn last line), re-make the ``last.*``/``best.*`` names. Returns the committed epoch."""
        epoch = self.epoch()
        pointer = self.pointer()
        keep = set(pointer[t] for t in TAGS) if pointer else set()
        sets = self.path / SETS
        if sets.is_dir():
            for f in sets.iterdir():
                if f.name.split(".", 1)[0] not in keep or f.name.endswith(fileops.TMP_SUFFIX):
                    fileops.remove(f)
        for f in self.path.iterdir():
            if _own_tmp(f):
                fileops.remove(f)
        rows = [r for r in self.metrics() if r["epoch"] <= epoch]
        fileops.write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if pointer:
            self._link_names(pointer)
        return epoch

    def append_metrics(self, row: dict) -> None:
        fileops.append_line(self.path / "metrics.jsonl", json.dumps(row))

    def commit(self, epoch: int, model, meta: dict, optimizer, improved: bool, ema: dict | None = None) -> None:
        """Write epoch ``epoch``'s set and commit it as ``last`` (and ``best`` when ``improved``);
        ``ema``: the EMA network's state dict, written into the set beside the model's."""
        name = f"e{epoch:04d}"
        previous = self.pointer()
        try:
            checkpoint.save(self.path / SETS, name, model, {**meta, **provenance()}, optimizer, ema)
            pointer = {"format": "advrep-checkpoints/1", "epoch": epoch, "last": name,
                       "best": name if improved or previous is None else previous["best"],
                       "best_epoch": epoch if improved or previous is None else previous["best_epoch"]}
            fileops.write_text(self.path / POINTER, json.dumps(pointer, indent=1))
        except StorageError as e:
            kept = f"epoch {previous['epoch']} is kept" if previous else "no epoch was committed yet"
            raise StorageError(f"{e}; {kept}, resume with `advrep train --resume {self.path}`") from None
        try:
            self._link_names(pointer)
            for old in {previous[t] for t in TAGS} if previous else ():
                if old not in (pointer["last"], pointer["best"]):
                    for suffix in SUFFIXES:
                        fileops.remove(self.path / SETS / f"{old}{suffix}")
            if pointer["best"] != pointer["last"]:  # the best set is never resumed from
                fileops.remove(self.path / SETS / f"{pointer['best']}.optim.safetensors")
        except StorageError as e:
            raise StorageError(f"{e}; epoch {epoch} is committed ({POINTER}), resume with "
                               f"`advrep train --resume {self.path}`") from None

    def _link_names(self, pointer: dict) -> None:
        for tag in TAGS:
            stem = self.path / SETS / pointer[tag]
            for suffix in SUFFIXES:
                src, dst = stem.with_name(stem.name + suffix), self.path / f"{tag}{suffix}"
                if src.is_file() and (tag == "last" or suffix != ".optim.safetensors"):  # best: no resume
                    fileops.link(src, dst)
                else:
                    fileops.remove(dst)

    def write_report(self, report: dict, out_dir: Path | None = None) -> None:
        from .report import write_report

        write_report(out_dir or self.path, report)


def free_dir(cfg) -> Path:
    """``out_dir/<run name>``, with ``-2``, ``-3``, ... appended while that is taken."""
    base = Path(cfg.out_dir) / config_mod.run_name(cfg)
    path, k = base, 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def resolve_checkpoint(target: str | Path, tag: str = "best") -> tuple[Path, Run | None]:
    """``(checkpoint stem, its run or None)`` for what a user names: a run directory (its
    ``tag``), a checkpoint file or stem inside a run (``RUN/best.safetensors``: through the run's
    commit pointer) or anywhere else (``model.safetensors`` with its sidecar)."""
    target = Path(target)
    if target.is_dir():
        run = Run.open(target)
        return run.checkpoint(tag), run
    stem = checkpoint.stem(target)
    if stem.name in TAGS and is_run(stem.parent):
        run = Run(stem.parent)
        return run.checkpoint(stem.name), run
    return stem, (Run(stem.parent.parent) if stem.parent.name == SETS and is_run(stem.parent.parent) else None)
