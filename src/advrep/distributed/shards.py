"""Sharded batches and random draws: a sample is augmented, and gets its attack's random start,
identically whichever rank holds it, as in one process with the global batch."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .. import attacks
from ..data.loader import DeviceLoader
from . import group


class ShardedLoader(DeviceLoader):
    """:class:`DeviceLoader` yielding this rank's slice of every global batch.

    Every rank runs the same permutation and augmentation on the whole global batch, which
    is cheap next to the attack, so a sample is augmented identically whichever rank keeps
    it. A last batch that does not divide by the world size is trimmed to a multiple of it
    (dropped if smaller than the world size); with ``full_batches`` it is completed instead. With
    one process this is :class:`DeviceLoader`.
    """

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        if self.full_batches:
            return full + (rest > 0)
        return full + (rest >= group.world())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        w, r = group.world(), group.rank()
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
    if group.world() == 1 or hi - lo == total:
        return contextlib.nullcontext()
    return _GlobalDraws(lo, hi, total)


def attack_in_shards(attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``attack(xb, yb)`` over batches of ``batch_size`` of (float ``x``, ``y``), each rank on its
    share of every batch with :func:`global_draws`; returns all ranks' results, in order."""
    out = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        lo, hi = group.shard(len(xb))
        with global_draws(lo, hi, len(xb)):
            out.append(group.gather_cat(attack(xb[lo:hi], yb[lo:hi])))
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
