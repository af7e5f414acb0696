"""Small tensor helpers shared by attacks and methods."""

import torch


def fp32(t: torch.Tensor) -> torch.Tensor:
    """At least fp32: bf16/fp16 logits from autocast are upcast for losses and softmax;
    fp64 (used by the exactness tests) is left alone."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
