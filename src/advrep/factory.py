"""From config sections to live objects: device, data splits, model, checkpointed model."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, data, models
from .config import DataConfig, ModelConfig
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"bad device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but this torch build sees no CUDA GPU; use --device=cpu")
    return device


def load_data(cfg: DataConfig, progress: bool = True) -> data.Splits:
    return data.load(cfg.dataset, cfg.data_dir, download=cfg.download, progress=progress)


def split_validation(x: torch.Tensor, y: torch.Tensor, size: int, seed: int):
    """``((x_train, y_train), (x_val, y_val))``: a fixed random slice of ``size`` training images
    held out for best-checkpoint selection (never the test set)."""
    if not 0 <= size < len(x):
        raise ConfigError(f"data.val_size must be between 0 and {len(x) - 1}, got {size}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = order[:size].sort().values, order[size:].sort().values
    return (x[train], y[train]), (x[val], y[val])


def normalization(name: str, info: data.DatasetInfo):
    """Resolve ``model.normalization`` ("none", "dataset" or a dataset name) to (mean, std)."""
    if name == "none":
        return None
    source = info if name == "dataset" else data.info(name)
    if len(source.mean) != info.channels:
        raise ConfigError(f"normalization '{name}' has {len(source.mean)} channels, the data has {info.channels}")
    return (source.mean, source.std)


def build_model(cfg: ModelConfig, info: data.DatasetInfo) -> torch.nn.Module:
    return models.create(cfg.arch, num_classes=info.num_classes, head=cfg.head, in_channels=info.channels,
                         image_size=info.image_size, normalization=normalization(cfg.normalization, info),
                         **cfg.head_args)


def model_from_checkpoint(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network an advrep checkpoint describes and load its weights."""
    state, meta, _ = checkpoint.load(path)
    model = models.create(meta["arch"], num_classes=meta["num_classes"], head=meta["head"],
                          in_channels=meta["in_channels"], image_size=meta["image_size"],
                          normalization=meta["normalization_values"], **meta["head_args"])
    checkpoint.load_state_checked(model, state, str(path), meta["arch"])
    return model.to(device).eval(), meta
