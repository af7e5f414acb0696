"""Small tensor helpers shared by attacks and methods."""

import torch


def fp32(t: torch.Tensor) -> torch.Tensor:
    """At least fp32: bf16/fp16 logits from autocast are upcast for losses and softmax;
    fp64 (used by the exactness tests) is left alone."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1]: uint8 divided by 255, floats as they are (see :func:`images`)."""
    return x.float().div(255) if x.dtype == torch.uint8 else fp32(x)


def images(x, name: str = "x") -> torch.Tensor:
    """``x`` checked as a batch of images advrep can attack: a 4-D tensor (N, C, H, W) of uint8
    (0-255) or of floats in [0, 1]. Nothing is guessed: floats outside [0, 1] or another dtype
    are one clear error, not rescaled."""
    from .errors import ConfigError

    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch tensor of images (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ConfigError(f"{name} has shape {tuple(x.shape)}; images go as (N, C, H, W)"
                          + (" (add the channel axis: x.unsqueeze(1))" if x.dim() == 3 else ""))
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ConfigError(f"{name} has dtype {x.dtype}; pass uint8 images (0-255) or floats in [0, 1]")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1 or not bool(torch.isfinite(x).all())):
        raise ConfigError(f"{name} holds floats in [{float(x.min()):.4g}, {float(x.max()):.4g}]; advrep's "
                          "models take images in [0, 1] (divide 0-255 values by 255, or pass them as uint8)")
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """8-bit images (float images in [0, 1] rounded to the nearest level)."""
    return x if x.dtype == torch.uint8 else (x.float() * 255).round().clamp(0, 255).to(torch.uint8)


def pinned(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` in page-locked host memory when it is bound for a CUDA device (its batches then copy
    asynchronously, see :func:`to_device`); as it is otherwise."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        return t.pin_memory()
    return t


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; a host-to-CUDA copy does not block the host (from :func:`pinned`
    memory it is asynchronous, and stream order makes it safe for the work that follows)."""
    return t.to(device, non_blocking=torch.device(device).type == "cuda")
