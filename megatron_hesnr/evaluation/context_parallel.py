"""Context-parallel sequence split, exactly as Megatron's ``get_batch_on_this_cp_rank``.

Megatron cuts every per-token tensor of a batch into ``2 * cp_size`` equal chunks
along the sequence dimension and gives context-parallel rank ``r`` chunks ``r``
and ``2 * cp_size - 1 - r`` (in that order), which balances causal-attention work.
Batch tensors are ``[batch, seq, ...]`` there (``seq_dim=1``; Megatron uses
``seq_dim=2`` only for the ``[b, 1, s, s]`` attention mask).  The per-token
statistics of the CP-local logits need no CP communication, but any extra
per-token tensor (e.g. the HE-SNR scoring mask) must be split the same way; this
module does that without Megatron, so it can be tested against it.
"""
from __future__ import annotations

import torch


def _check(seq_len: int, cp_rank: int, cp_size: int) -> None:
    if int(cp_size) != cp_size or cp_size < 1:
        raise ValueError(f"cp_size must be a positive integer, got {cp_size}")
    if int(cp_rank) != cp_rank or not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank must be in [0, {cp_size}), got {cp_rank}")
    if seq_len % (2 * cp_size):
        raise ValueError(
            f"sequence length {seq_len} is not divisible by 2 * context_parallel_size = "
            f"{2 * cp_size} (Megatron requires it for the load-balanced CP split)"
        )


def split_for_context_parallel(
    tensor: torch.Tensor, cp_rank: int, cp_size: int, seq_dim: int = 1
) -> torch.Tensor:
    """The part of ``tensor`` that context-parallel rank ``cp_rank`` holds.

    Same values, order and shape as Megatron's ``get_batch_on_this_cp_rank``:
    ``tensor.shape[seq_dim]`` shrinks to ``seq / cp_size``, made of chunk
    ``cp_rank`` followed by chunk ``2 * cp_size - 1 - cp_rank``.  ``cp_size == 1``
    returns ``tensor`` itself.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError("cannot split a 0-d tensor along a sequence dimension")
    dim = seq_dim % tensor.dim() if -tensor.dim() <= seq_dim < tensor.dim() else None
    if dim is None:
        raise ValueError(f"seq_dim={seq_dim} is out of range for a {tensor.dim()}-d tensor")
    seq_len = tensor.shape[dim]
    _check(seq_len, cp_rank, cp_size)
    if cp_size == 1:
        return tensor
    chunks = tensor.reshape(*tensor.shape[:dim], 2 * cp_size, seq_len // (2 * cp_size), *tensor.shape[dim + 1:])
    index = torch.tensor([cp_rank, 2 * cp_size - 1 - cp_rank], dtype=torch.long, device=tensor.device)
    kept = chunks.index_select(dim, index)
    return kept.reshape(*tensor.shape[:dim], -1, *tensor.shape[dim + 1:])


def context_parallel_positions(seq_len: int, cp_rank: int, cp_size: int, device=None) -> torch.Tensor:
    """Global sequence positions held by ``cp_rank``, in its local order ([seq / cp_size])."""
    _check(seq_len, cp_rank, cp_size)
    return split_for_context_parallel(torch.arange(seq_len, device=device), cp_rank, cp_size, seq_dim=0)
