"""The process group torchrun starts, its collectives, and each rank's share of the work.

Without torchrun (or with one process) every function here is the identity: ``rank()`` is 0,
``world()`` 1, collectives return their input.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist


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
