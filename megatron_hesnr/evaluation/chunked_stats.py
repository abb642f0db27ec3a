"""Per-token HE-SNR statistics made inside the model's output layer, a chunk of positions at a time.

``GPTModel.forward(..., output_processor=f)`` (megatron-core >= 0.18) hands ``f`` the final hidden
states ``[s, b, h]`` (after multi-token prediction has taken its share: the main head's), the output
layer and its weight (the shared embedding when tied) and the model's ``scale_logits``.
:func:`chunked_token_stats` runs the output layer itself on ``chunk`` positions at a time: the chunk's
logits shard ``[chunk, b, V/TP]`` -> ``scale_logits`` -> this shard's statistics (the PyTorch
reference or the Triton kernel, :func:`~megatron_hesnr.metric.token_stats.compute_shard_stats`) -> dropped
before the next chunk.  The shard records of all chunks (``3 + k`` numbers per token) are merged over
tensor parallelism in one gather and finalised; the model returns the per-token statistics
(:meth:`~megatron_hesnr.metric.token_stats.TokenStats.pack`, 6 numbers per token), never logits.

Sequence parallelism: the hidden states hold ``s / TP`` positions per rank and the output layer
all-gathers its input over TP.  Feeding it positions ``[lo, hi)`` of the local block gathers
positions ``r * s / TP + [lo, hi)`` of every rank ``r``: the gather is chunked with the logits, and
the labels and results of those positions are taken and put back accordingly.

Extra memory of a rank (``N = s x b`` tokens, ``V_l = V / TP`` columns):
``chunk x b x V_l x`` the logits' bytes (the chunk's logits) + the PyTorch reference's fp32 working
copy of at most 64 MiB of them (none with the Triton kernel) + ``N x (3 + k) x 4 x (TP + 2)`` bytes
(this rank's shard records, all ranks' gathered records, the merged one) + ``N x 6 x 8`` bytes (the
result).  With sequence parallelism the output layer's gather adds ``chunk x b x h`` hidden states.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..metric.shard_stats import ShardStats
from ..metric.token_stats import merge_over_tp, resolve_impl, tp_rank_size, compute_shard_stats, finalize
from ..metric.vocab import check_vocab_size, vocab_shard

#: ``--hesnr-logits-chunk auto``: positions per chunk such that a chunk's logits take this much per rank.
LOGITS_BUDGET_BYTES = 256 * 2**20


def auto_chunk_positions(micro_batch_size: int, local_vocab: int, element_size: int,
                         budget: int = LOGITS_BUDGET_BYTES) -> int:
    """Positions per chunk whose logits ``[chunk, micro_batch_size, local_vocab]`` fit ``budget`` bytes."""
    return max(1, budget // max(1, micro_batch_size * local_vocab * element_size))


@dataclass(frozen=True)
class StatsRequest:
    """What the statistics of one micro-batch need besides the model's own outputs."""

    labels: torch.Tensor
    """``[b, s]`` global target ids of this rank's positions (context-parallel split already)."""
    k: int
    vocab_size: int
    """The tokenizer's true vocabulary (ids at or above it are Megatron's padding)."""
    padded_vocab_size: int | None
    tp_group: Any
    tp_size: int
    impl: str
    chunk: int | str
    """Positions per chunk, or ``"auto"`` (:data:`LOGITS_BUDGET_BYTES` of logits per rank)."""


def chunk_positions(request: StatsRequest, micro_batch_size: int, local_vocab: int, element_size: int) -> int:
    """The chunk of ``request`` in positions (``auto`` resolved for these logits)."""
    if request.chunk == "auto":
        return auto_chunk_positions(micro_batch_size, local_vocab, element_size)
    return int(request.chunk)


def _cat(parts: list[ShardStats]) -> ShardStats:
    return ShardStats(*(torch.cat([getattr(p, f) for p in parts]) for f in ("max", "sumexp", "target", "topk")))


def chunked_token_stats(*, hidden_states: torch.Tensor, output_layer, request: StatsRequest,
                        output_weight: torch.Tensor | None = None, scale_logits=None) -> torch.Tensor:
    """Packed per-token statistics ``[s, b, 6]`` (float64) of ``hidden_states`` under ``output_layer``."""
    labels = request.labels.t()  # [s, b], the order of the output layer's rows
    s, b = labels.shape
    tp = request.tp_size
    parts = tp if tp > 1 and getattr(output_layer, "sequence_parallel", False) else 1
    local_s = hidden_states.shape[0]
    if hidden_states.dim() != 3 or local_s * parts != s or hidden_states.shape[1] != b:
        raise RuntimeError(f"hidden states {tuple(hidden_states.shape)} do not match labels [s={s}, b={b}]"
                           + (f" split over {parts} sequence-parallel ranks" if parts > 1 else ""))
    weight = output_weight if output_weight is not None else getattr(output_layer, "weight", None)
    local_vocab = weight.shape[0] if weight is not None else None
    if local_vocab is not None and request.padded_vocab_size is not None \
            and local_vocab * tp != request.padded_vocab_size:
        raise ValueError(f"the output layer has {local_vocab} columns per rank; expected "
                         f"{request.padded_vocab_size} / TP={tp} (padded vocabulary)")
    step = max(1, chunk_positions(request, b, local_vocab or 1, hidden_states.element_size()) // parts)
    by_block = labels.reshape(parts, local_s, b)
    tp_rank, _ = tp_rank_size(request.tp_group)
    shard = impl = None
    records, targets, bounds = [], [], []
    for lo in range(0, local_s, step):
        hi = min(local_s, lo + step)
        logits, _ = output_layer(hidden_states[lo:hi], weight=output_weight, runtime_gather_output=False)
        if scale_logits is not None:
            logits = scale_logits(logits)
        if logits.shape[:2] != (parts * (hi - lo), b):
            raise RuntimeError(f"the output layer gave logits {tuple(logits.shape)} for hidden states "
                               f"{tuple(hidden_states[lo:hi].shape)} ({parts} sequence-parallel parts)")
        if shard is None:
            vocab = check_vocab_size(request.vocab_size, logits.shape[-1] * tp)
            shard, impl = vocab_shard(tp_rank, logits.shape[-1], vocab), resolve_impl(request.impl, logits)
        y = by_block[:, lo:hi].reshape(-1)
        records.append(compute_shard_stats(logits.reshape(-1, logits.shape[-1]), y, shard, request.k, impl))
        targets.append(y)
        bounds.append((lo, hi))
        del logits  # the chunk's logits are gone before the next chunk's are made
    y = torch.cat(targets)
    merged = merge_over_tp(_cat(records), request.tp_group, tp, y, shard, vocab)
    packed = finalize(merged, y, vocab).pack()
    out = torch.empty((parts, local_s, b, packed.shape[-1]), dtype=packed.dtype, device=packed.device)
    offset = 0
    for lo, hi in bounds:
        n = parts * (hi - lo) * b
        out[:, lo:hi] = packed[offset:offset + n].view(parts, hi - lo, b, -1)
        offset += n
    return out.view(s, b, -1)
