"""Accuracy under the corruptions, per corruption and severity, and the two means a report
keeps apart: the 15 benchmark corruptions (RobustBench's ``corruptions_acc`` when they are the
official files) and the held-out ones."""

from __future__ import annotations

import math
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import ConfigError, DataError
from .official import BENCHMARK, _official, _read_official
from .table import CORRUPTIONS, GENERATED_BENCHMARK, GENERATED_NOTE, SEVERITIES, _check_name, _check_severity, \
    available, generate


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

    Returns ``{"source": "official" | "generated", "note", "n": images per cell, "per_corruption":
    {name: {"1": acc, ..., "5": acc, "mean": acc}}, "benchmark": {"names", "complete",
    "per_severity", "mean"}, "held_out": {"names", "per_severity", "mean"}}``: ``benchmark`` over
    the evaluated ones of the 15 benchmark corruptions (official: CIFAR-10-C's 15; generated:
    advrep's 15 stand-ins), ``complete`` when all 15 ran at all 5 severities; ``held_out`` over
    every other corruption evaluated (official: spatter, saturate, ...; generated: the extras);
    a group with nothing evaluated is None. Generated reports add ``fidelity``: each
    corruption's closeness to the reference (see :mod:`advrep.corruptions.table`).
    :func:`report_keys` turns it into the run report's top-level keys."""
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
    fifteen = BENCHMARK if source == "official" else GENERATED_BENCHMARK
    benchmark = [name for name in fifteen if name in acc]
    report = {"source": source, "note": note, "n": n, "per_corruption": acc,
              "benchmark": _group(acc, benchmark, severities),
              "held_out": _group(acc, [name for name in acc if name not in fifteen], severities)}
    if report["benchmark"]:
        report["benchmark"]["complete"] = len(benchmark) == len(fifteen) and set(severities) == set(SEVERITIES)
    if source == "generated":
        report["fidelity"] = {name: CORRUPTIONS[name].fidelity for name in acc}
    return report


def _group(acc: dict, names: list[str], severities) -> dict | None:
    """Mean accuracy over ``names`` per severity and over all their cells (every cell has the same
    images, so the mean over cells is the mean over all corrupted images, as RobustBench's)."""
    if not names:
        return None
    per_severity = {str(s): sum(acc[name][str(s)] for name in names) / len(names) for s in severities}
    return {"names": names, "per_severity": per_severity, "mean": sum(per_severity.values()) / len(per_severity)}


def report_keys(report: dict) -> dict:
    """The run report's top-level keys for a corruption report: RobustBench's ``corruptions_acc``
    only for the official files' 15 benchmark corruptions at all 5 severities, the generated
    set's 15-corruption mean under its own ``corruptions_generated_acc``; nothing otherwise."""
    group = report.get("benchmark")
    if not group or not group["complete"]:
        return {}
    return {"corruptions_acc" if report["source"] == "official" else "corruptions_generated_acc": group["mean"]}


def headline(report: dict) -> str:
    """One line for the printed table and report.md: the benchmark mean under its own label, then
    the held-out corruptions (generated: the extras) by name, each its mean over severities."""
    group, official = report.get("benchmark"), report["source"] == "official"
    if group and group["complete"]:
        text = (f"corruptions_acc (official files, the 15 benchmark corruptions x 5 severities, as "
                f"RobustBench): {100 * group['mean']:.2f}%" if official else
                f"corruptions_generated_acc (advrep's generated set, 15 x 5; not comparable to "
                f"CIFAR-10-C or RobustBench): {100 * group['mean']:.2f}%")
    elif group:
        text = (f"corruptions ({report['source']}, {len(group['names'])} of the 15 benchmark corruptions: "
                f"no RobustBench mean): {100 * group['mean']:.2f}%")
    else:
        text = f"corruptions ({report['source']}): none of the 15 benchmark corruptions"
    held = report.get("held_out")
    if held:
        rows = report["per_corruption"]
        text += ("; held out: " if official else "; extras: ") + ", ".join(
            f"{name} {100 * rows[name]['mean']:.2f}%" for name in held["names"])
    return text
