"""A batch loader that keeps the split on the device as uint8 and augments there.

No DataLoader workers and no host round trip per batch: the whole split moves to the device
once (CIFAR-10's training set is 150 MB as uint8), each epoch draws one permutation from a
generator seeded by ``(seed, epoch)``, and random crop (zero padding) and horizontal flip
run batched on the device. Because the order depends only on ``(seed, epoch)``, a resumed
run sees exactly the batches an uninterrupted one would.

With ``full_batches`` (the trainer sets it for a compiled model, whose graphs have static
shapes) a last batch that would be partial is completed with the first images of the epoch's
order, so every batch has ``batch_size`` rows: each image is still seen once per epoch, and a
few of them twice.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "crop", "flip", "crop-flip")


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch back to its size (any dtype)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def epoch_seed(seed: int, epoch: int) -> int:
    """One integer per (seed, epoch), shared by the loader and the trainer's reseeding."""
    return (seed * 1_000_003 + epoch) % (2**63)


class DeviceLoader:
    """Iterate ``(x, y)`` batches: ``x`` float in [0, 1] (NCHW), ``y`` int64, on ``device``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device="cpu",
                 shuffle: bool = False, augment: str = "none", seed: int = 0,
                 channels_last: bool = False, full_batches: bool = False):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"DeviceLoader wants uint8 NCHW images, got {x.dtype} {tuple(x.shape)}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.full_batches = full_batches
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.x.device
        gen = torch.Generator(device=device)
        gen.manual_seed(epoch_seed(self.seed, self.epoch))
        n = len(self.x)
        order = torch.randperm(n, generator=gen, device=device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if self.full_batches and start + self.batch_size > n:  # wrap around to the epoch's first images
                idx = torch.arange(start, start + self.batch_size, device=device) % n
                idx = idx if order is None else order[idx]
                xb, yb = self.x[idx], self.y[idx]
            elif order is None:
                xb, yb = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                xb, yb = self.x[idx], self.y[idx]
            if "crop" in self.augment:
                xb = random_crop(xb, 4, gen)
            if "flip" in self.augment:
                xb = random_flip(xb, gen)
            xb = xb.float().div_(255).contiguous(memory_format=self.memory_format)
            yield xb, yb
