"""From config sections to live objects: device, data splits, model, checkpointed model."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, data, models
from .config import DataConfig, ModelConfig
from .models import ra
from .errors import CheckpointError, ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"bad device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but this torch build sees no CUDA GPU; use --device=cpu")
    if device.type == "cuda":
        # cuDNN picks the fastest convolution algorithm per shape once; advrep's shapes are fixed
        torch.backends.cudnn.benchmark = True
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def fast_path(device: torch.device, amp: str = "auto", channels_last: str = "auto") -> tuple[bool, bool]:
    """``(bf16 autocast, channels_last)`` for training on ``device``: "on"/"bf16" and "off" as
    given, "auto" what is fastest there: bf16 where it is native (:func:`native_bf16`; an
    AVX2-only CPU would emulate it); channels_last on a CUDA GPU and on a CPU with oneDNN
    (its convolutions run NHWC: the TRADES MNIST step measured 1.3-1.4x faster in fp32, on an
    AVX2 and on an AVX512 CPU, docs/performance.md). Evaluation uses neither: it runs in fp32."""
    bf16 = amp == "bf16" or (amp == "auto" and native_bf16(device))
    nhwc = device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())
    return bf16, channels_last == "on" or (channels_last == "auto" and nhwc)


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
    model = models.create(cfg.arch, num_classes=info.num_classes, head=cfg.head, in_channels=info.channels,
                          image_size=info.image_size, normalization=normalization(cfg.normalization, info),
                          **cfg.head_args)
    return ra.enable(model, cfg.ra_weight) if cfg.ra else model


def model_from_checkpoint(path: str | Path, device: torch.device, weights: str | None = None
                          ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network an advrep checkpoint describes and load its weights: ``weights``
    ``raw``, ``ema`` or None (auto: the EMA weights when the checkpoint has them). The returned
    meta's ``loaded_weights`` says which."""
    state, meta, _ = checkpoint.load(path, optimizer=False, weights=weights)
    meta = {**meta, "loaded_weights": checkpoint.chosen_weights(meta, weights)}
    if meta["arch"] == "custom":
        raise CheckpointError(f"{path} holds the weights of a network of your own, which advrep cannot build; "
                              "load them into it with advrep.load(path, model=YourNetwork())")
    model = models.create(meta["arch"], num_classes=meta["num_classes"], head=meta["head"],
                          in_channels=meta["in_channels"], image_size=meta["image_size"],
                          normalization=meta["normalization_values"], **meta["head_args"])
    checkpoint.load_state_checked(model, state, str(path), meta["arch"])
    if meta.get("ra"):  # reverse attention holds no weights; the sidecar says it was on
        ra.enable(model)
    return model.to(device).eval(), meta


# Keys that reference implementations publish but that no forward pass reads: TRADES' and
# MART's WideResNet build an unused `sub_block1`.
UNUSED_REFERENCE_KEYS = ("sub_block1.",)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A foreign state dict: safetensors, or a .pt/.pth read with ``weights_only=True`` (never
    unpickling code), unwrapped from the usual containers (``state_dict``, ``model``,
    ``model_state_dict``) and DataParallel's ``module.`` prefix."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for unreadable or unsafe files
        raise CheckpointError(f"cannot load {path} as a state dict ({str(e).splitlines()[0]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(UNUSED_REFERENCE_KEYS)}


def model_from_weights(path: Path, arch: str, info: data.DatasetInfo, norm: str = "none") -> torch.nn.Module:
    """Architecture ``arch`` for dataset ``info`` with the weights of ``path`` (eval mode, CPU)."""
    model = models.create(arch, num_classes=info.num_classes, in_channels=info.channels,
                          image_size=info.image_size, normalization=normalization(norm, info))
    checkpoint.load_state_checked(model, read_state_dict(path), str(path), arch)
    return model.eval()
