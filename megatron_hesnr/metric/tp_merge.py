"""Merging per-shard statistics across the tensor-parallel group.

Each rank packs its per-token record (max, sumexp, target, k values: ``3 + k``
numbers in the record's dtype, fp32 or fp64 for fp64 logits) and one all-gather
brings every rank the records of all ranks; the merge itself
(:func:`merge_shard_stats`) is local.  The logits never leave the rank.

Before that, every rank contributes a small header (:data:`HEADER_FIELDS`,
``HEADER_SIZE`` int64 values per call, not per token) to one tiny all-gather,
and every rank checks that all TP ranks describe the same tokens: same token
count, ``k``, record dtype, shard width and true vocabulary size, and the same
labels (two position-weighted checksums, see :func:`labels_checksums`).  A
disagreement would crash the record gather (buffers of different sizes abort
gloo and are undefined under NCCL) or give a silently wrong target logit or
top-k, so it raises the same :class:`~.rank_agreement.RanksDisagree` on every
rank before any record moves.
"""
from __future__ import annotations

import functools

import torch

from .rank_agreement import agree_or_raise, all_gather_flat
from .shard_stats import ShardStats

#: Two primes below 2**24 and a primitive root of each: the checksum bases.
CHECKSUM_MODULI = ((16_777_213, 5_001), (16_777_199, 5_003))
_TABLE = 4096

HEADER_FIELDS = ("tokens", "k", "record_dtype", "local_vocab", "vocab_size",
                 "labels_checksum_a", "labels_checksum_b")
HEADER_SIZE = len(HEADER_FIELDS)
_DTYPE_CODES = {torch.float32: 32, torch.float64: 64}


@functools.lru_cache(maxsize=8)
def _weights(n: int, device: torch.device, p: int, g: int) -> torch.Tensor:
    """``g**i mod p`` for ``i < n`` (int64): two small power tables, one product."""
    lo, x = [], 1
    for _ in range(_TABLE):
        lo.append(x)
        x = x * g % p
    hi, y = [], 1
    for _ in range((n + _TABLE - 1) // _TABLE):
        hi.append(y)
        y = y * x % p  # x == g**_TABLE here
    i = torch.arange(n, dtype=torch.int64)
    w = torch.tensor(lo, dtype=torch.int64)[i % _TABLE] * torch.tensor(hi or [1], dtype=torch.int64)[i // _TABLE]
    return torch.remainder(w, p).to(device)


def labels_checksums(labels: torch.Tensor) -> list[torch.Tensor]:
    """Two polynomial checksums ``sum_i y_i * g**i mod p`` of ``labels`` (0-d int64 each).

    Any single changed label changes both (``g**i`` is invertible modulo a
    prime) unless the change is a multiple of both primes (about 2**48), and
    two labels swapped at distances below ``p - 1`` always change them; edits
    that compensate (``+2`` here, ``-1`` there) are caught because the weights
    are powers of a large base, not the positions.  Other differences collide
    with probability about ``2**-48``.  Computed on the labels' device: every
    product and sum stays exact in int64 for any token count below 2**39.
    """
    lab = labels.reshape(-1).to(torch.int64)
    out = []
    for p, g in CHECKSUM_MODULI:
        w = _weights(lab.numel(), lab.device, p, g)
        out.append(torch.remainder(torch.remainder(torch.remainder(lab, p) * w, p).sum(), p))
    return out


def _header(n: int, k: int, dtype: torch.dtype, local_vocab: int, vocab_size: int, labels,
            device=None) -> torch.Tensor:
    """The ``HEADER_SIZE`` int64 header on ``device`` (the checksums never visit the host)."""
    fixed = torch.tensor([n, k, _DTYPE_CODES.get(dtype, 0), local_vocab, vocab_size], dtype=torch.int64,
                         device=device)
    if labels is None:
        return torch.cat([fixed, fixed.new_zeros(2)])
    return torch.cat([fixed, torch.stack(labels_checksums(labels.to(device)))])


def _show(row: list[int]) -> dict:
    return dict(zip(HEADER_FIELDS, row))


def check_tp_agreement(group, device, *, n: int, k: int, dtype: torch.dtype, local_vocab: int,
                       vocab_size: int, labels: torch.Tensor | None) -> None:
    """One header all-gather; ``RanksDisagree`` on every rank unless all TP ranks agree."""
    agree_or_raise(
        _header(n, k, dtype, local_vocab, vocab_size, labels, device), HEADER_FIELDS, group, device,
        "tensor-parallel ranks",
        "Every rank of tp_group must call token_stats with the same tokens and labels (its own "
        "vocab shard of the same batch), the same k, logits dtype and vocab_size",
        show=_show,
    )


def gather_shard_stats(
    local: ShardStats,
    group,
    group_size: int,
    *,
    labels: torch.Tensor | None = None,
    local_vocab: int = 0,
    vocab_size: int = 0,
) -> ShardStats:
    """All-gather ``local`` over ``group``: records stacked ``[group_size, N, ...]``.

    Two collectives: the ``HEADER_SIZE`` int64 header, then ``N * (3 + k)``
    record values per rank.  ``labels`` (the ``N`` global target ids),
    ``local_vocab`` and ``vocab_size`` go into the header; ranks that disagree
    raise ``RanksDisagree`` (a ``ValueError``) on every rank.
    """
    n, k = local.max.shape[0], local.k
    if labels is not None and labels.numel() != n:
        raise ValueError(f"labels hold {labels.numel()} ids but the shard record has {n} tokens")
    check_tp_agreement(group, local.max.device, n=n, k=k, dtype=local.max.dtype, local_vocab=local_vocab,
                       vocab_size=vocab_size, labels=labels)
    out = all_gather_flat(local.pack().reshape(-1), group, group_size)
    return ShardStats.unpack(out.view(group_size, n, 3 + k))
