"""Data-parallel training and evaluation over the processes ``torchrun`` starts.

Launch::

    torchrun --nproc_per_node=4 -m advrep train --config configs/pgd-at-cifar10-resnet18.yaml

Each process reads its place from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group: NCCL on
``cuda:LOCAL_RANK``, gloo on the CPU. Without torchrun (or with one process) nothing here
changes anything: every helper is then the identity.

What makes a run with global batch B on N ranks end with the weights of one process with
batch B (within float tolerance):

- :class:`ShardedLoader`: every rank draws the same global permutation and augmentation and
  keeps its contiguous slice of each global batch (B/N images). A last global batch that does
  not split evenly is trimmed to a multiple of N (at most N−1 images of that epoch are left
  out), so every rank holds an equal shard and DDP's mean of per-rank mean gradients is the
  mean over the global batch.
- :func:`sync_batchnorm`: BatchNorm statistics over the global batch (torch's SyncBatchNorm
  on GPUs, :class:`CPUSyncBatchNorm` over gloo, which torch's does not support).
- :func:`global_draws`: per-sample random draws inside the attack (the random start) are made
  for the whole global batch, identically on every rank, and each rank keeps its slice, so a
  sample gets the same start whichever rank holds it.
- :class:`DataParallel`: DDP with ``forward_features``/``forward_stages`` routed through its
  forward, so the methods' passes all-reduce their gradients; the attack runs on the
  underlying model, so it never synchronizes gradients.

Not matched across ranks: dropout masks (drawn per rank; advrep's ResNets and WRNs have no
dropout), and losses that couple the samples of a batch beyond BatchNorm (a rank sees only
its shard).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.overrides import TorchFunctionMode

from . import attacks
from .data.loader import DeviceLoader


# ----------------------------------------------------------------------------- process group


def requested() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one that writes logs, checkpoints and reports."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device: ``cuda:LOCAL_RANK``
    when ``device`` is a GPU, else ``device``. Without torchrun, return ``device`` unchanged."""
    if not requested():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env:// from torchrun
    return device


def cleanup() -> None:
    if active():
        dist.destroy_process_group()


@contextlib.contextmanager
def session():
    """A command's lifetime under torchrun: ranks other than 0 print nothing (their stdout goes
    to /dev/null; errors still reach stderr), and the process group is closed at the end."""
    silent = requested() and int(os.environ.get("RANK", "0")) != 0
    try:
        with open(os.devnull, "w") as sink:
            with contextlib.redirect_stdout(sink) if silent else contextlib.nullcontext():
                yield
    finally:
        cleanup()


def barrier() -> None:
    if active():
        dist.barrier()


# ----------------------------------------------------------------------------- collectives


def _comm_device(t: torch.Tensor) -> torch.device:
    # NCCL moves CUDA tensors only; gloo works on the CPU
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over the ranks (``sum``, ``mean``, ``min`` or ``max``); a new tensor."""
    if world() == 1:
        return t.clone()
    out = t.detach().to(_comm_device(t), copy=True)
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    dist.all_reduce(out, op=ops[op])
    if op == "mean":
        out = out / world()
    return out.to(t.device)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each scalar's mean over the ranks, in one all-reduce."""
    if world() == 1 or not values:
        return values
    keys = sorted(values)
    stacked = reduce(torch.stack([values[k].float().reshape(()) for k in keys]), "mean")
    return dict(zip(keys, stacked.unbind()))


def from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order (first dims may differ)."""
    if world() == 1:
        return t
    dev = _comm_device(t)
    local = (t.to(torch.uint8) if t.dtype == torch.bool else t).to(dev).contiguous()  # gloo has no bool
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=dev))
    sizes = [int(s) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:n] for p, n in zip(parts, sizes)])
    return out.to(device=t.device, dtype=t.dtype)


# ----------------------------------------------------------------------------- sharding


def rank_dir(path: Path | None) -> Path | None:
    """``path/rank-<r>`` under torchrun (state that each rank keeps for its own share), else ``path``."""
    return path / f"rank-{rank()}" if path is not None and world() > 1 else path


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous ``[lo, hi)`` of ``n`` items (sizes differ by at most one)."""
    r, w = rank(), world()
    return n * r // w, n * (r + 1) // w


class ShardedLoader(DeviceLoader):
    """:class:`DeviceLoader` yielding this rank's slice of every global batch.

    Every rank runs the same permutation and augmentation on the whole global batch, which
    is cheap next to the attack, so a sample is augmented identically whichever rank keeps
    it. A last batch that does not divide by the world size is trimmed to a multiple of it
    (dropped if smaller than the world size). With one process this is :class:`DeviceLoader`.
    """

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        return full + (rest >= world())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        w, r = world(), rank()
        for xb, yb in super().__iter__():
            per_rank = len(xb) // w
            if per_rank == 0:
                continue
            yield xb[r * per_rank:(r + 1) * per_rank], yb[r * per_rank:(r + 1) * per_rank]


# ----------------------------------------------------------------------------- random draws

_INPLACE = (torch.Tensor.uniform_, torch.Tensor.normal_)
_LIKE = (torch.rand_like, torch.randn_like)
_FACTORY = (torch.rand, torch.randn)


def _empty_as(t: torch.Tensor, n: int) -> torch.Tensor:
    """An empty ``(n, *t.shape[1:])`` tensor in ``t``'s layout (draws fill memory order)."""
    fmt = torch.channels_last if (t.dim() == 4 and not t.is_contiguous()
                                  and t.is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format
    return torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device, memory_format=fmt)


class _GlobalDraws(TorchFunctionMode):
    """Make every random draw whose first dimension is the local batch for the global batch
    and return this rank's rows ``[lo, hi)``. The generator then advances as in one process
    with the global batch, on every rank alike."""

    def __init__(self, lo: int, hi: int, total: int):
        super().__init__()
        self.lo, self.hi, self.total = lo, hi, total

    def _local(self, size) -> bool:
        return len(size) > 0 and size[0] == self.hi - self.lo

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INPLACE and self._local(args[0].shape):
            full = _empty_as(args[0], self.total)
            func(full, *args[1:], **kwargs)
            with torch.no_grad():
                return args[0].copy_(full[self.lo:self.hi])
        if func in _LIKE and self._local(args[0].shape):
            return func(_empty_as(args[0], self.total), **kwargs)[self.lo:self.hi]
        if func in _FACTORY:
            size = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            if self._local(size):
                return func(self.total, *size[1:], **kwargs)[self.lo:self.hi]
        return func(*args, **kwargs)


def global_draws(lo: int, hi: int, total: int):
    """Context in which a rank holding rows ``[lo, hi)`` of a global batch of ``total`` draws
    the random numbers one process would draw for those rows: ``rand``/``randn`` (and
    ``_like``) and ``uniform_``/``normal_`` of tensors whose first dimension is ``hi − lo``.
    All ranks must hold the same generator state (the trainer reseeds each epoch). A no-op
    with one process.

    It intercepts every torch call in the block (a Python-level hook, some microseconds each),
    so it wraps only the attack. Attacks whose draws depend on the data (Square's choice of
    samples still to attack) are not matched."""
    if world() == 1 or hi - lo == total:
        return contextlib.nullcontext()
    return _GlobalDraws(lo, hi, total)


def attack_in_shards(attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``attack(xb, yb)`` over batches of ``batch_size`` of (float ``x``, ``y``), each rank on its
    share of every batch with :func:`global_draws`; returns all ranks' results, in order."""
    out = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        lo, hi = shard(len(xb))
        with global_draws(lo, hi, len(xb)):
            out.append(gather_cat(attack(xb[lo:hi], yb[lo:hi])))
    return torch.cat(out)


def pgd_in_shards(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, **pgd) -> torch.Tensor:
    """PGD examples of (float ``x``, ``y``) in eval mode, as :class:`advrep.readouts.Probe`
    computes them in one process, each rank attacking its share."""
    was = model.training
    model.eval()
    try:
        return attack_in_shards(lambda xb, yb: attacks.pgd(model, xb, yb, random_start="uniform", **pgd),
                                x, y, batch_size)
    finally:
        model.train(was)


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
        if not (batch_stats and world() > 1):
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
    if world() == 1:
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
