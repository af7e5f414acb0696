"""The model across ranks: BatchNorm over the global batch, and DDP over advrep's entry points."""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from . import group


# ----------------------------------------------------------------------------- the model


class _SyncBatchNormFn(torch.autograd.Function):
    """Batch normalization over the global batch; returns ``(y, mean, unbiased var)``, the last two
    for the running statistics.

    As the native CPU kernel, the per-channel sums are accumulated in float64 and the backward
    is the closed form: the input gradient is a difference of nearly equal terms, and float32
    sums (or autograd through the statistics) lose about three digits of it."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims, shape = [0, *range(2, x.dim())], [1, -1, *[1] * (x.dim() - 2)]
        count = x.new_tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        sums = torch.cat([x.sum(dims, dtype=torch.float64), count])
        dist.all_reduce(sums)
        n, mean = sums[-1], sums[:-1] / sums[-1]
        xmu = x.double() - mean.view(shape)
        var = (xmu * xmu).sum(dims)  # the centred second pass: stable where E[x²] − E[x]² is not
        dist.all_reduce(var)
        var = var / n
        invstd = torch.rsqrt(var + eps)
        y = (xmu * invstd.view(shape)).to(x.dtype)
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.n = n
        mean, var = mean.to(x.dtype), (var * n / (n - 1)).to(x.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, mean, invstd, weight = ctx.saved_tensors
        dims, shape = [0, *range(2, grad.dim())], [1, -1, *[1] * (grad.dim() - 2)]
        c = invstd.numel()
        g, xmu = grad.double(), x.double() - mean.view(shape)
        local = torch.cat([g.sum(dims), (g * xmu).sum(dims)])
        # this rank's parameter gradients; DDP averages them over the ranks
        grad_weight = (local[c:] * invstd).to(weight.dtype) if weight is not None else None
        grad_bias = local[:c].to(weight.dtype, copy=True) if weight is not None else None  # before the all-reduce
        dist.all_reduce(local)  # the statistics depend on every rank's samples
        mean_dy, mean_dy_xmu = local[:c] / ctx.n, local[c:] / ctx.n
        scale = invstd * weight.double() if weight is not None else invstd
        grad_x = (g - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) * scale.view(shape)
        return grad_x.to(x.dtype), grad_weight, grad_bias, None


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch, all-reduced over
    gloo (torch's SyncBatchNorm runs on GPUs only): two all-reduces forward (the sum, then
    the centred sum of squares) and one backward."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.training or self.running_mean is None
        if not (batch_stats and group.world() > 1):
            return super().forward(x)
        y, mean, var = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var, alpha=m)
        return y


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        like = module.weight if module.affine else module.running_mean  # keep the dtype and device
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, **({} if like is None else
                                                             {"dtype": like.dtype, "device": like.device}))
        new.load_state_dict(module.state_dict())
        if module.affine:  # keep the same Parameter objects
            new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_cpu_sync(child))
    return module


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm synchronized across ranks (unchanged with one process)."""
    if group.world() == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cpu_sync(model)


class _Entry(nn.Module):
    """Routes DDP's forward to one of the model's entry points."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, entry: str = "forward"):
        return getattr(self.model, entry)(x)


# the argument's name changed in torch 2.13 (buffers are still broadcast once, at construction)
_NO_BUFFER_SYNC = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
    DistributedDataParallel.__init__).parameters else "broadcast_buffers": False}


class DataParallel(DistributedDataParallel):
    """DDP over an advrep model. ``forward_features`` and ``forward_stages`` run through DDP's
    forward, so the backward of every pass all-reduces (averages) the gradients; any other
    attribute (``head``, ``feature_dim``, reverse-attention state) is read from the model.

    No buffer broadcast in forward: synchronized BatchNorm keeps the running statistics equal on
    every rank, and broadcasting them in place between the two passes of TRADES-style
    objectives would invalidate the first pass's autograd graph."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__(_Entry(model), device_ids=[device.index] if device.type == "cuda" else None,
                         **_NO_BUFFER_SYNC)

    def forward_features(self, x):
        return self(x, entry="forward_features")

    def forward_stages(self, x):
        return self(x, entry="forward_stages")

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(super().__getattr__("module").model, name)
