"""The standard-trained surrogate of the transfer check (:mod:`advrep.checks`).

``eval.surrogate`` names one (a run directory or an advrep checkpoint); otherwise a small CNN is
trained once with ``standard`` on the same training data (1 epoch for MNIST-like data, 5 for
CIFAR-like, Adam 1e-3) and cached under ``<data cache>/surrogates/``, keyed by the dataset and its
files. It is trained in a private folder that is renamed into place, so concurrent evaluations
never share a half-trained surrogate and the first to finish wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

from . import config as config_mod
from .data import cache_dir
from .factory import model_from_checkpoint
from .runs import Run, resolve_checkpoint
from .trainer import Trainer


def cached(data_cfg, splits, device, progress: bool = True) -> torch.nn.Module:
    """The cached standard small CNN for ``splits`` (trained now if there is none yet)."""
    key = hashlib.sha1(f"{splits.info.name}|{splits.source}|{len(splits.x_train)}".encode()).hexdigest()[:12]
    folder = cache_dir() / "surrogates" / f"{splits.info.name}-small-cnn-{key}"
    if not Run(folder).has_checkpoint("last"):
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        epochs = 1 if splits.info.family == "mnist" else 5
        cfg = config_mod.load(None, [f"--data.dataset={data_cfg.dataset}", "--model.arch=small-cnn",
                                     "--method=standard", f"--train.epochs={epochs}", "--train.optimizer=adam",
                                     "--train.lr=0.001", "--train.weight_decay=0", "--data.val_size=0",
                                     "--eval.after_train=false", f"--device={device}"])
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=data_cfg.data_dir,
                                                                download=data_cfg.download))
        # one line per epoch on stderr: the first evaluation of a dataset waits for this training
        say = (lambda line: print(f"advrep: transfer surrogate: {line}", file=sys.stderr, flush=True)) if progress \
            else (lambda _: None)
        say(f"training a standard small CNN for {epochs} epoch(s) on {splits.info.name} (once; cached in {folder})")
        trainer = Trainer(cfg, tmp, progress=progress, log=say)
        trainer.fit()
        trainer.run.release()
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return model_from_checkpoint(Run(folder).checkpoint("last"), torch.device(device))[0]


def for_config(cfg, splits, device, progress: bool = True) -> torch.nn.Module:
    """``eval.surrogate`` if set (its best checkpoint for a run directory), else :func:`cached`."""
    if cfg.eval.surrogate:
        stem, _ = resolve_checkpoint(Path(cfg.eval.surrogate), "best")
        return model_from_checkpoint(stem, device)[0]
    return cached(cfg.data, splits, device, progress)
