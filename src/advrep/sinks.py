"""Optional experiment-logging sinks (``--train.log=tensorboard|wandb|none``).

``metrics.jsonl`` stays the record; a sink receives the same row after each epoch's commit:
the training metrics, the learning rate, eps, the validation accuracies and every scalar of
the read-outs (nested keys joined with ``/``: ``readouts/feature_shift/mean``), with the epoch
as the step. The packages are imported only when asked for (extras ``advrep[tensorboard]``,
``advrep[wandb]``); a missing one is one clear error before training starts.

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``); a resumed
  run adds a new event file to the same folder.
- ``wandb``: a W&B run named after the run directory, its files under ``RUN/wandb/``, in
  **offline** mode unless the user has set W&B up (``WANDB_MODE`` set, or ``WANDB_API_KEY``);
  ``wandb sync RUN/wandb/offline-run-*`` uploads an offline run later. The W&B run id is derived
  from the run directory, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from pathlib import Path

from .errors import ConfigError

SINKS = ("none", "tensorboard", "wandb")
SKIP = ("epoch", "train_time_s")  # the step itself; wall time is not a metric worth a chart


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The row's numbers as flat ``{name: float}`` (nested dicts joined with ``/``, lists and
    strings left out, booleans as 0/1)."""
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if not prefix and key in SKIP:
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = float(value)
    return out


def _need(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"train.log={extra} needs the {extra} package ({e}); install it with "
                          f"pip install 'advrep[{extra}]', or set --train.log=none") from None


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, global_step=row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, cfg):
        wandb = _need("wandb", "wandb")
        run_dir = Path(run_dir).resolve()
        set_up = "WANDB_MODE" in os.environ or bool(os.environ.get("WANDB_API_KEY"))
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "advrep"), name=run_dir.name,
                              id=hashlib.sha1(str(run_dir).encode()).hexdigest()[:16], resume="allow",
                              dir=str(run_dir), config=cfg.to_dict(), mode=None if set_up else "offline")

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["epoch"])

    def close(self) -> None:
        self.run.finish()


def check(name: str) -> None:
    """ConfigError now (before any training) if sink ``name`` cannot be opened."""
    if name == "tensorboard":
        _need("tensorboard", "tensorboard")
    elif name == "wandb":
        _need("wandb", "wandb")


def open_sink(name: str, run_dir: Path, cfg):
    """The sink ``name`` for run ``run_dir`` (None for ``none``)."""
    if name == "none":
        return None
    if name == "tensorboard":
        return TensorBoardSink(run_dir)
    if name == "wandb":
        return WandbSink(run_dir, cfg)
    raise ConfigError(f"unknown train.log '{name}'; use one of: {', '.join(SINKS)}")
