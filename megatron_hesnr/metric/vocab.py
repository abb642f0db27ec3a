"""Vocabulary ranges of tensor-parallel logits shards.

Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by * TP``
and gives TP rank ``r`` the contiguous slice ``[r * V_local, (r + 1) * V_local)`` of
the padded vocabulary; padding ids sit at the end.  This module is the one place
that turns (rank, shard width, true vocabulary size) into column ranges.
"""
from __future__ import annotations

import numbers

from typing import NamedTuple


class VocabShard(NamedTuple):
    """The columns one logits shard holds, in global token ids."""

    start: int
    """First global id of the shard (``rank * local_size``)."""
    local_size: int
    """Columns in the shard (``V_local``), padding included."""
    real_size: int
    """Leading columns of the shard that are real tokens (< true vocab size)."""

    @property
    def end(self) -> int:
        return self.start + self.local_size


def vocab_shard(rank: int, local_size: int, vocab_size: int | None = None) -> VocabShard:
    """Columns owned by tensor-parallel ``rank`` when every shard is ``local_size`` wide.

    ``vocab_size`` is the tokenizer's true vocabulary size; ids at or above it are
    padding and are excluded from every statistic.  ``None`` means no padding.
    """
    if rank < 0:
        raise ValueError(f"tensor-parallel rank must be >= 0, got {rank}")
    if local_size <= 0:
        raise ValueError(f"logits shard has no vocabulary columns (V_local={local_size})")
    start = rank * local_size
    if vocab_size is None:
        real = local_size
    else:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        real = max(0, min(start + local_size, vocab_size) - start)
    return VocabShard(start, local_size, real)


def check_vocab_size(vocab_size: int | None, padded_size: int) -> int:
    """Validate the true vocabulary size against the padded (global) width."""
    if vocab_size is None:
        return padded_size
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
        raise ValueError(f"vocab_size must be a positive integer (the tokenizer's vocabulary) or None, "
                         f"got {vocab_size!r} ({type(vocab_size).__name__})")
    vocab_size = int(vocab_size)
    if not 0 < vocab_size <= padded_size:
        raise ValueError(
            f"vocab_size={vocab_size} must be in [1, {padded_size}] "
            f"(the padded vocabulary the logits cover)"
        )
    return vocab_size


def padded_vocab_size(vocab_size: int, tp_size: int = 1, divisible_by: int = 128) -> int:
    """Megatron's padded vocabulary: ``vocab_size`` rounded up to a multiple of
    ``divisible_by * tp_size`` (``--make-vocab-size-divisible-by``, default 128),
    so that every tensor-parallel shard has the same width."""
    for name, value in (("vocab_size", vocab_size), ("tp_size", tp_size), ("divisible_by", divisible_by)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    multiple = divisible_by * tp_size
    return -(-vocab_size // multiple) * multiple
