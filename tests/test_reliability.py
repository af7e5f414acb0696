"""Crash safety of the run directory: a kill at any instant loses at most the epoch in progress,
one writer per run, and a failed write damages nothing.

The fault injector. A process killed with SIGKILL leaves the directory exactly as it was at that
instant (the kernel keeps what was written), so the test runs one short training run in-process
with every file operation of advrep (:mod:`advrep.fileops`: each write, its final rename, each
append, link and removal) wrapped, and copies the run directory right before and right after
each operation: each copy is the directory a kill at that instant would leave. Copies equal to
the previous one are dropped. Each copy is then resumed (or, where nothing was committed yet,
started again with the same command, as the error message says) and must end with weights
equal to the uninterrupted run's, bit for bit, the same metrics and the same report. A few
points are also killed for real (SIGKILL in a subprocess) and resumed the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from advrep import checkpoint, fileops
from advrep.cli import main
from advrep.errors import StorageError
from advrep.runs import POINTER, Run
from conftest import ROOT, tiny_command

pytestmark = pytest.mark.slow  # every case trains (tiny runs on real MNIST images)

FILE_OPS = ("write_with", "append_line", "link", "remove", "_rename")


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def outcome(run: Path) -> dict:
    """What must not depend on where a run was interrupted."""
    rows = [{k: v for k, v in r.items() if k != "train_time_s"} for r in Run(run).metrics()]
    report = json.loads((run / "report.json").read_text())
    return {"weights": load_file(str(run / "last.safetensors")), "metrics": rows,
            "report": {k: report[k] for k in ("clean_acc", "attacks", "epoch", "n")},
            "best": checkpoint.read_meta(run / "best")["epoch"]}


def assert_same(a: dict, b: dict, where: str) -> None:
    assert a["weights"].keys() == b["weights"].keys(), where
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), f"{where}: {k} differs"
    assert a["metrics"] == b["metrics"], where
    assert a["report"] == b["report"] and a["best"] == b["best"], where


def recover(data: Path, run: Path) -> None:
    """What the user does after a crash: resume, or start again where no epoch was committed."""
    if Run(run).has_checkpoint("last"):
        assert main(["train", "--quiet", "--resume", str(run)]) == 0
    else:
        assert main(tiny_command(data, run)) == 0
    assert not list(run.rglob(f"*{fileops.TMP_SUFFIX}")), "temporary files are removed"
    pointer = json.loads((run / POINTER).read_text())
    sets = sorted(p.name.split(".")[0] for p in (run / "checkpoints").iterdir())
    assert set(sets) == {pointer["last"], pointer["best"]}, "only the committed sets are kept"


@pytest.fixture(scope="module")
def injected(tiny_mnist, tmp_path_factory):
    """The uninterrupted run, and the directory as a kill before or after each file operation
    would leave it (one copy per distinct state), with the operations' names."""
    root = tmp_path_factory.mktemp("injected")
    ref, copies = root / "ref", root / "copies"
    copies.mkdir()
    points, last, renames = [], [None], []
    real = {name: getattr(fileops, name) for name in FILE_OPS}

    def snapshot(label):
        if not ref.exists():
            return
        d = digest(ref)
        if d != last[0]:
            last[0] = d
            shutil.copytree(ref, copies / f"{len(points):03d}", ignore=shutil.ignore_patterns(".lock"))
            points.append(label)

    def wrap(name):
        def op(*args, **kwargs):
            label = f"{name} {Path(args[-1] if name in ('_rename', 'link') else args[0]).name}"
            if name == "_rename":
                renames.append(Path(args[1]).name)
            snapshot(f"before {label}")
            out = real[name](*args, **kwargs)
            snapshot(f"after {label}")
            return out

        return op

    snapshot("start")
    try:
        for name in FILE_OPS:
            setattr(fileops, name, wrap(name))
        assert main(tiny_command(tiny_mnist, ref)) == 0
    finally:
        for name, fn in real.items():
            setattr(fileops, name, fn)
    return ref, copies, points, renames


def test_a_kill_before_or_after_any_file_operation_loses_at_most_the_epoch_in_progress(tiny_mnist, injected):
    ref, copies, points, _ = injected
    expected = outcome(ref)
    assert len(points) >= 40, "the run's writes are all seen"
    print(f"\n{len(points)} distinct kill points (before/after each file operation of a 3-epoch run)")
    for k, label in enumerate(points):
        run = copies / f"{k:03d}"
        recover(tiny_mnist, run)
        assert_same(outcome(run), expected, f"kill point {k} ({label})")


REAL_KILL = textwrap.dedent("""
    import os, signal, sys
    from advrep import fileops
    from advrep.cli import main
    target, count = int(sys.argv[1]), [0]
    real = fileops._rename
    def rename(src, dst):
        count[0] += 1
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)  # the write is complete in its temporary file
        real(src, dst)
    fileops._rename = rename
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("name,occurrence", [("config.yaml", 1), ("e0002.optim.safetensors", 1),
                                             ("checkpoints.json", 2), ("last.json", 2), ("report.json", 1)])
def test_a_real_sigkill_is_recovered_the_same_way(tiny_mnist, injected, tmp_path, name, occurrence):
    """Killed for real right before a rename: the start, a set file, a commit, a refreshed
    name, the report."""
    ref, _, _, renames = injected
    which = [i + 1 for i, n in enumerate(renames) if n == name][occurrence - 1]
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", REAL_KILL, str(which), *tiny_command(tiny_mnist, run)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(run.rglob(f"*{fileops.TMP_SUFFIX}")), "it died with a write half done"
    recover(tiny_mnist, run)
    assert_same(outcome(run), outcome(ref), f"real kill at rename {which}")


def test_a_torn_metrics_line_is_dropped_and_its_epoch_run_again(tiny_mnist, injected, tmp_path):
    ref, copies, points, _ = injected
    first = next(k for k, p in enumerate(points) if p.startswith("after _rename checkpoints.json"))
    run = tmp_path / "run"
    shutil.copytree(copies / f"{first:03d}", run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 0.1')  # a kill in the middle of the next append
    recover(tiny_mnist, run)
    assert_same(outcome(run), outcome(ref), "torn metrics line")


# ------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_with_the_holder_named(tiny_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    holder = Run(run).acquire()
    try:
        assert main(tiny_command(tiny_mnist, run)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by process {os.getpid()}" in err
        assert not (run / "config.yaml").exists(), "the refused writer wrote nothing"
    finally:
        holder.release()
    assert main(tiny_command(tiny_mnist, run)) == 0


def test_a_dead_holder_does_not_keep_the_lock(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from advrep.runs import Run; "
                             f"held = Run({str(run)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StorageError, match=f"in use by process {proc.pid}"):
            Run(run).acquire()
    finally:
        proc.kill()
        proc.wait()
    Run(run).acquire().release()


# ------------------------------------------------------------------------- failed writes


def test_a_full_disk_at_the_commit_keeps_the_previous_epoch(tiny_mnist, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real, seen = fileops._rename, []

    def rename(src, dst):
        if Path(dst).name == POINTER:
            seen.append(dst)
            if len(seen) == 2:  # the commit of epoch 2
                raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(fileops, "_rename", rename)
    assert main(tiny_command(tiny_mnist, run)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "epoch 1 is kept" in err and f"--resume {run}" in err
    assert err.count("\n") == 1, "one line, no traceback"
    monkeypatch.setattr(fileops, "_rename", real)
    assert not list(run.rglob(f"*{fileops.TMP_SUFFIX}")), "the temporary file is removed"
    assert Run(run).epoch() == 1 and checkpoint.read_meta(run / "last")["epoch"] == 1
    recover(tiny_mnist, run)


def test_a_failed_report_write_keeps_the_previous_report(tiny_mnist, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(tiny_command(tiny_mnist, run)) == 0
    before = (run / "report.json").read_text()
    real = fileops._rename

    def rename(src, dst):
        if Path(dst).name == "report.json":
            raise OSError(13, "Permission denied")
        real(src, dst)

    monkeypatch.setattr(fileops, "_rename", rename)
    assert main(["eval", str(run), "--quiet", "--eval.attacks=[pgd]"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert (run / "report.json").read_text() == before and json.loads(before)
    assert not list(run.glob(f"*{fileops.TMP_SUFFIX}"))
