"""What the commands do, as functions: the CLI (:mod:`advrep.cli`) parses arguments and calls
these, so a Python caller and the command line run the same code with the same defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from . import config as config_mod
from . import distributed, surrogate
from .evaluate import evaluate, write_report
from .factory import model_from_checkpoint
from .methods import readouts_of
from .runs import Run, provenance


def evaluate_checkpoint(ckpt: Path, cfg, splits, device, out_dir: Path, progress: bool = True,
                        model=None, meta: dict | None = None, label: str | None = None,
                        run: Run | None = None) -> dict:
    """Evaluate checkpoint ``ckpt`` (or ``model`` with its ``meta``) under ``cfg`` on the test
    split; write the report to ``out_dir`` (under the writer lock of ``run`` when the report
    goes into that run's directory) and return it. ``label`` is how the report names the
    checkpoint (default: its path)."""
    if model is None:
        model, meta = model_from_checkpoint(ckpt, device)
    cfg = config_mod.resolve(cfg, splits.info)
    torch.manual_seed(cfg.seed)  # the attacks' random starts: a report is reproducible, whatever ran before
    progress = progress and distributed.is_main()
    if not distributed.is_main():  # the attacks are split over the ranks; checks and corruptions run on rank 0
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, checks=False, corruptions="none"))
    context = {"architecture": meta["arch"], "dataset": splits.info.name, "method": meta.get("method"),
               "checkpoint": label or str(ckpt), "epoch": meta.get("epoch"), **provenance()}
    names = [*(readouts_of(meta["method"]) if meta.get("method") else ()), *cfg.eval.readouts]
    writes_run = run is not None and Path(out_dir).resolve() == run.path.resolve() and distributed.is_main()
    # the run's lock from before the attacks: a second writer is told at once, not after the evaluation
    with run.lock() if writes_run else contextlib.nullcontext():
        report = evaluate(model, splits.x_test, splits.y_test, threat=cfg.threat, ev=cfg.eval, device=device,
                          progress=progress, context=context, readout_names=list(dict.fromkeys(names)),
                          state_dir=out_dir, surrogate=lambda: surrogate.for_config(cfg, splits, device, progress))
        if distributed.is_main():
            write_report(out_dir, report)
    return report
