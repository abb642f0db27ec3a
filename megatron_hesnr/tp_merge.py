"""Merging per-shard statistics across the tensor-parallel group.

Each rank packs its per-token record (max, sumexp, target, k values: ``3 + k``
fp32 numbers) behind a small fixed header, and **one** all-gather brings every
rank the records of all ranks; the merge itself (:func:`merge_shard_stats`) is
local.  The logits never leave the rank.

The header (:data:`HEADER_FIELDS`, a few fp32 integers per call, not per token)
lets every rank check after the gather that all TP ranks described the same
tokens: same token count, same ``k``, same shard width and true vocabulary size,
and the same labels (a position-weighted checksum).  A disagreement would give a
silently wrong target logit or top-k, so it raises on every rank alike (all
ranks see the same headers, so none is left waiting in a later collective).

A different token count per rank makes the gathered buffers differ in size,
which the collective itself cannot survive (gloo aborts, NCCL is undefined).
Set ``HESNR_TP_VALIDATE=1`` (or pass ``validate=True``) to gather the header
alone first, so that such a mismatch raises a clear error instead; that costs
one more tiny collective per call, so it is off by default.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .shard_stats import ShardStats

#: Integers below this are exact in fp32.
_EXACT = 1 << 24
#: Largest prime below 2**24: checksum terms and their sums stay exact.
_CHECKSUM_PRIME = 16_777_213

HEADER_FIELDS = ("tokens_low", "tokens_high", "k", "local_vocab", "vocab_size", "labels_checksum")
HEADER_SIZE = len(HEADER_FIELDS)

VALIDATE_ENV = "HESNR_TP_VALIDATE"


def labels_checksum(labels: torch.Tensor) -> torch.Tensor:
    """Position-weighted checksum of ``labels`` modulo a prime < 2**24 (0-d int64).

    A changed label or two swapped labels always change it (p is prime and
    the terms are weighted by position); other differences collide with
    probability about 1/p.  It stays on the labels' device (no host sync).
    """
    p = _CHECKSUM_PRIME
    lab = torch.remainder(labels.reshape(-1).to(torch.int64), p)
    pos = torch.remainder(torch.arange(1, lab.numel() + 1, device=lab.device, dtype=torch.int64), p)
    # Each reduced term is < 2**24, so the int64 sum is exact for any N < 2**39.
    return torch.remainder(torch.remainder(lab * pos, p).sum(), p)


def _header(n: int, k: int, local_vocab: int, vocab_size: int, labels, device) -> torch.Tensor:
    for name, value in (("k", k), ("local_vocab", local_vocab), ("vocab_size", vocab_size)):
        if value >= _EXACT:
            raise ValueError(f"{name}={value} does not fit the fp32 TP header (must be < 2**24)")
    ints = torch.tensor(
        [n % _EXACT, n // _EXACT, k, local_vocab, vocab_size, 0], dtype=torch.float32, device=device
    )
    if labels is not None:
        ints[5] = labels_checksum(labels.to(device)).to(torch.float32)
    return ints


def _check_headers(headers: torch.Tensor) -> None:
    """Raise if the TP ranks' headers ``[R, HEADER_SIZE]`` differ."""
    if bool((headers == headers[0]).all()):
        return
    rows = headers.to(torch.int64).cpu().tolist()
    bad = [HEADER_FIELDS[j] for j in range(HEADER_SIZE) if len({r[j] for r in rows}) > 1]
    per_rank = {
        f"tp_rank {i}": {
            "tokens": r[0] + r[1] * _EXACT, "k": r[2], "local_vocab": r[3],
            "vocab_size": r[4], "labels_checksum": r[5],
        }
        for i, r in enumerate(rows)
    }
    raise ValueError(
        f"tensor-parallel ranks disagree on {', '.join(bad)}: {per_rank}. Every rank of "
        "tp_group must call token_stats with the same tokens and labels (its own vocab "
        "shard of the same batch), the same k and the same vocab_size"
    )


def _device_backend(group, device: torch.device) -> str:
    """The backend that serves ``device`` in ``group`` ("nccl", "gloo", ...)."""
    backend = str(dist.get_backend(group)).lower()
    if ":" in backend:  # e.g. "cpu:gloo,cuda:nccl" when several backends share a group
        table = dict(part.split(":", 1) for part in backend.split(","))
        return table.get(device.type, backend)
    return backend


def _all_gather_flat(buf: torch.Tensor, group, group_size: int) -> torch.Tensor:
    """All-gather a 1-D buffer; returns ``[group_size, len(buf)]``."""
    backend = _device_backend(group, buf.device)
    if backend == "nccl":
        # One flat output, no per-rank copies (NCCL's list all_gather copies out).
        out = torch.empty(group_size * buf.numel(), dtype=buf.dtype, device=buf.device)
        dist.all_gather_into_tensor(out, buf, group=group)
        return out.view(group_size, -1)
    staged = buf
    if backend == "gloo" and buf.device.type != "cpu":
        # gloo's all_gather works on host memory; the record is tiny next to the logits.
        staged = buf.cpu()
    out = torch.empty((group_size, staged.numel()), dtype=staged.dtype, device=staged.device)
    dist.all_gather(list(out.unbind(0)), staged, group=group)
    return out.to(buf.device)


def _validate_default() -> bool:
    return os.environ.get(VALIDATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def gather_shard_stats(
    local: ShardStats,
    group,
    group_size: int,
    *,
    labels: torch.Tensor | None = None,
    local_vocab: int = 0,
    vocab_size: int = 0,
    validate: bool | None = None,
) -> ShardStats:
    """All-gather ``local`` over ``group``: records stacked ``[group_size, N, ...]``.

    One collective of ``HEADER_SIZE + N * (3 + k)`` fp32 values per rank (two
    with ``validate``).  ``labels`` (the ``N`` global target ids), ``local_vocab``
    and ``vocab_size`` go into the header so that every rank can check that the
    TP ranks agree; a mismatch raises ``ValueError`` on every rank.
    """
    n, k = local.max.shape[0], local.k
    if labels is not None and labels.numel() != n:
        raise ValueError(f"labels hold {labels.numel()} ids but the shard record has {n} tokens")
    device = local.max.device
    header = _header(n, k, local_vocab, vocab_size, labels, device)
    if validate is None:
        validate = _validate_default()
    if validate:
        _check_headers(_all_gather_flat(header, group, group_size))

    width = 3 + k
    buf = torch.empty(HEADER_SIZE + n * width, dtype=torch.float32, device=device)
    buf[:HEADER_SIZE] = header
    rec = buf[HEADER_SIZE:].view(n, width)
    rec[:, 0] = local.max
    rec[:, 1] = local.sumexp
    rec[:, 2] = local.target
    rec[:, 3:] = local.topk
    out = _all_gather_flat(buf, group, group_size)
    if not validate:
        _check_headers(out[:, :HEADER_SIZE])
    return ShardStats.unpack(out[:, HEADER_SIZE:].view(group_size, n, width))
