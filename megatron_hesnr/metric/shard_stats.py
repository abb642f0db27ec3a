"""Per-token statistics of one logits shard: the pure-PyTorch reference.

One shard is ``[tokens, V_local]`` logits covering the global ids
``[start, start + V_local)``; only its first ``real_size`` columns are real tokens.
Per token it yields the record that the tensor-parallel merge consumes:

* ``max``    -- max logit over the real columns (NaN if any real logit is non-finite)
* ``sumexp`` -- sum of exp(z - max) over the real columns
* ``target`` -- the target's logit when this shard owns the target id, else -inf
* ``topk``   -- the k largest real logits, descending, padded with -inf

That is ``3 + k`` numbers per token, the only thing that ever leaves a rank.
This reference processes the tokens in chunks so that no fp32 copy of all the
logits exists: peak extra memory is one fp32 chunk plus O(tokens x k).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .vocab import VocabShard

#: Bytes of one fp32 chunk of logits in the reference path.
DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass
class ShardStats:
    """Per-token statistics of one vocabulary shard (``N`` tokens; fp32, fp64 for fp64 logits)."""

    max: torch.Tensor
    """[N] max real logit; NaN marks a row with a non-finite real logit."""
    sumexp: torch.Tensor
    """[N] sum over real columns of exp(z - max)."""
    target: torch.Tensor
    """[N] target logit if owned by this shard, else -inf."""
    topk: torch.Tensor
    """[N, k] k largest real logits, descending, -inf padded."""

    @property
    def k(self) -> int:
        return self.topk.shape[-1]

    def pack(self) -> torch.Tensor:
        """The wire record ``[N, 3 + k]``: max, sumexp, target, top-k values."""
        return torch.cat(
            [self.max[:, None], self.sumexp[:, None], self.target[:, None], self.topk], dim=1
        )

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> "ShardStats":
        """Inverse of :meth:`pack` (works on any leading shape ``[..., N, 3 + k]``)."""
        return cls(packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3:])


def default_chunk_tokens(real_columns: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES, element_size: int = 4) -> int:
    """Tokens per chunk so that one working chunk takes about ``chunk_bytes``."""
    return max(1, chunk_bytes // (element_size * max(1, real_columns)))


def record_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """fp64 logits are reduced in fp64 (an fp32 copy would flip near-ties and
    overflow above fp32's range); every other dtype in fp32."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def shard_stats_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    shard: VocabShard,
    k: int,
    chunk_tokens: int | None = None,
) -> ShardStats:
    """Reference statistics of a 2-D logits shard ``[N, V_local]`` (any strides).

    ``labels`` are global token ids ``[N]``; a label outside this shard's real
    columns leaves ``target`` at -inf.
    """
    n = logits.shape[0]
    real = shard.real_size
    dev = logits.device
    work = record_dtype(logits.dtype)
    out_max = torch.empty(n, dtype=work, device=dev)
    out_sum = torch.empty(n, dtype=work, device=dev)
    out_tgt = torch.empty(n, dtype=work, device=dev)
    out_top = torch.full((n, k), float("-inf"), dtype=work, device=dev)
    if real == 0:  # a shard made only of padding contributes nothing
        out_max.fill_(float("-inf"))
        out_sum.zero_()
        out_tgt.fill_(float("-inf"))
        return ShardStats(out_max, out_sum, out_tgt, out_top)

    kk = min(k, real)
    step = chunk_tokens or default_chunk_tokens(real, element_size=torch.finfo(work).bits // 8)
    local = labels.to(device=dev, dtype=torch.long) - shard.start
    owned = (local >= 0) & (local < real)
    local = local.clamp(0, real - 1)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        # Working copy of this chunk only (bf16/fp16 logits are exact in fp32).
        x = logits[lo:hi, :real].to(work, copy=True)
        finite = torch.isfinite(x).all(dim=1)
        row_max = x.amax(dim=1)
        out_top[lo:hi, :kk] = torch.topk(x, kk, dim=1, sorted=True).values
        tgt = x.gather(1, local[lo:hi, None]).squeeze(1)
        out_tgt[lo:hi] = torch.where(owned[lo:hi], tgt, float("-inf"))
        # Sum of exp(z - max) in the working dtype, in place on the working copy.
        safe_max = torch.where(finite, row_max, 0.0)
        out_sum[lo:hi] = x.sub_(safe_max[:, None]).exp_().sum(dim=1)
        out_max[lo:hi] = torch.where(finite, row_max, float("nan"))
    return ShardStats(out_max, out_sum, out_tgt, out_top)


def merge_shard_stats(parts: ShardStats) -> ShardStats:
    """Merge per-shard records stacked on a leading shard axis ``[R, N, ...]``.

    The result is what one device holding the whole vocabulary would compute:
    max of maxima, log-add-exp of the sums, the single owned target, and the top-k
    of the ``R * k`` candidate values.  NaN (a non-finite row on any shard)
    propagates to the merged ``max``.
    """
    if parts.max.dim() != 2:
        raise ValueError("merge_shard_stats expects records stacked as [shards, tokens, ...]")
    k = parts.topk.shape[-1]
    m = parts.max.amax(dim=0)
    # exp(m_r - m) is 0 for an all-padding shard (m_r = -inf); NaN stays NaN.
    scale = torch.exp(parts.max - torch.where(torch.isfinite(m), m, 0.0))
    s = (parts.sumexp * scale).sum(dim=0)
    t = parts.target.amax(dim=0)
    r, n = parts.topk.shape[0], parts.topk.shape[1]
    cands = parts.topk.permute(1, 0, 2).reshape(n, r * k)  # explicit: n may be 0
    top = torch.topk(cands, k, dim=1, sorted=True).values
    return ShardStats(m, s, t, top)
