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

from .shards import ShardedLoader, attack_in_shards, global_draws, pgd_in_shards
from .group import (active, barrier, cleanup, from_main, gather_cat, is_main, mean_over_ranks, rank, rank_dir,
                    reduce, requested, session, setup, shard, world)
from .model import CPUSyncBatchNorm, DataParallel, sync_batchnorm

__all__ = ["ShardedLoader", "attack_in_shards", "global_draws", "pgd_in_shards", "active", "barrier", "cleanup",
           "from_main", "gather_cat", "is_main", "mean_over_ranks", "rank", "rank_dir", "reduce", "requested",
           "session", "setup", "shard", "world", "CPUSyncBatchNorm", "DataParallel", "sync_batchnorm"]
