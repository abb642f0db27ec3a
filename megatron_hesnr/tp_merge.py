"""Merging per-shard statistics across the tensor-parallel group.

Each rank packs its per-token record (max, sumexp, target, k values: ``3 + k``
fp32 numbers) and one all-gather brings every rank the records of all ranks;
the merge itself (:func:`merge_shard_stats`) is local.  The logits never leave
the rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .shard_stats import ShardStats


def gather_shard_stats(local: ShardStats, group, group_size: int) -> ShardStats:
    """All-gather ``local`` over ``group``: records stacked ``[group_size, N, ...]``."""
    packed = local.pack().contiguous()
    out = torch.empty((group_size,) + tuple(packed.shape), dtype=packed.dtype, device=packed.device)
    dist.all_gather(list(out.unbind(0)), packed, group=group)
    return ShardStats.unpack(out)
