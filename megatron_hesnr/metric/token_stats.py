"""Per-token HE-SNR quantities from logits: the public ``token_stats`` entry point.

Pipeline: logits shard -> :class:`ShardStats` (reference or fused kernel) ->
merge across the tensor-parallel group -> :func:`finalize` (float64 on ``[N, k]``).
"""
from __future__ import annotations

import numbers

from dataclasses import dataclass

import torch

from .defaults import DEFAULT_K
from .shard_stats import ShardStats, merge_shard_stats, record_dtype, shard_stats_torch
from .vocab import VocabShard, check_vocab_size, vocab_shard

IMPLS = ("auto", "torch", "triton")
_LOGIT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


@dataclass
class TokenStats:
    """Per-token quantities, each with the leading shape of the logits."""

    entropy: torch.Tensor
    """H_k: entropy (nats) of the renormalised top-k distribution; NaN if invalid."""
    logp: torch.Tensor
    """log p(y): full-softmax log-probability of the target; NaN if invalid."""
    logq: torch.Tensor
    """log q_y = z_y - LSE_k: target log-probability under the top-k distribution."""
    in_topk: torch.Tensor
    """bool: target logit >= the k-th largest logit (ties count as inside)."""
    top1: torch.Tensor
    """bool: target logit >= the largest logit."""
    valid: torch.Tensor
    """bool: finite logits row and a scorable label (0 <= y < vocab_size)."""
    k: int | None = None
    """The top-k size these were computed with (``None``: built by hand); the
    accumulator refuses stats of another ``k``."""

    @property
    def nll(self) -> torch.Tensor:
        """Per-token cross-entropy -log p(y) over the real vocabulary (NaN if invalid).

        "Loss + metric" mode: this comes from the same single read of the logits as
        the HE-SNR quantities, and equals Megatron's ``vocab_parallel_cross_entropy``
        whenever the vocabulary has no padding (Megatron's own loss also normalises
        over the padding ids; this one excludes them).
        """
        return -self.logp

    @property
    def p(self) -> torch.Tensor:
        return self.logp.exp()

    @property
    def shape(self) -> torch.Size:
        return self.valid.shape

    def map(self, fn) -> "TokenStats":
        """Apply ``fn`` to every tensor field (e.g. reshape, index, move)."""
        return TokenStats(**{name: fn(getattr(self, name)) for name in TENSOR_FIELDS}, k=self.k)

    def pack(self) -> torch.Tensor:
        """float64 ``[..., 6]``: the fields in :data:`TENSOR_FIELDS` order (bools as 0 / 1): what a
        capture that computes the statistics inside the model returns instead of logits."""
        return torch.stack([getattr(self, name).to(torch.float64) for name in TENSOR_FIELDS], dim=-1)

    @classmethod
    def unpack(cls, packed: torch.Tensor, k: int | None = None) -> "TokenStats":
        """Inverse of :meth:`pack`."""
        if packed.shape[-1] != len(TENSOR_FIELDS):
            raise ValueError(f"packed token statistics have {packed.shape[-1]} fields, expected {len(TENSOR_FIELDS)}")
        cols = packed.unbind(-1)
        return cls(entropy=cols[0], logp=cols[1], logq=cols[2], in_topk=cols[3] != 0, top1=cols[4] != 0,
                   valid=cols[5] != 0, k=k)


TENSOR_FIELDS = ("entropy", "logp", "logq", "in_topk", "top1", "valid")


def finalize(merged: ShardStats, labels: torch.Tensor, vocab_size: int) -> TokenStats:
    """Turn merged full-vocabulary records into per-token quantities.

    Works in float64 on ``[N, k]``: the top-k values are exact copies of logits,
    so H_k, in_topk and top1 carry no rounding beyond float64; only the
    log-sum-exp carries the fp32 error of the shard sums.
    """
    m = merged.max.double()
    s = merged.sumexp.double()
    t = merged.target.double()
    v = merged.topk.double()
    labels = labels.to(device=m.device)
    valid = torch.isfinite(m) & torch.isfinite(t) & (labels >= 0) & (labels < vocab_size)
    v1 = v[:, :1]
    u = v - torch.where(torch.isfinite(v1), v1, 0.0)  # <= 0; -inf for padding slots
    w = torch.exp(u)
    z = w.sum(dim=1)
    q = w / z[:, None]
    # H = log Z - sum_i q_i u_i, with 0 * (-inf) taken as 0 for empty slots.
    entropy = torch.log(z) - torch.where(w > 0, q * u, 0.0).sum(dim=1)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=m.device)
    return TokenStats(
        entropy=torch.where(valid, entropy, nan),
        # (t - m) - log s, not t - (m + log s): no cancellation when |m| >> log s.
        logp=torch.where(valid, (t - m) - torch.log(s), nan),
        logq=torch.where(valid, (t - v1[:, 0]) - torch.log(z), nan),
        in_topk=valid & (t >= v[:, -1]),
        top1=valid & (t >= v[:, 0]),
        valid=valid,
        k=merged.k,
    )


def _rows_view(logits: torch.Tensor):
    """A 2-D view ``[N, V]`` of ``logits`` without copying, and the leading-dim order.

    Leading dims are reordered by stride when needed (Megatron's ``[s, b, V]``
    transposed to ``[b, s, V]`` is viewable after that).  Returns ``None`` when no
    reordering gives a view.
    """
    lead = list(range(logits.dim() - 1))
    try:
        return logits.view(-1, logits.shape[-1]), lead
    except RuntimeError:
        pass
    order = sorted(lead, key=lambda d: -logits.stride(d))
    try:
        return logits.permute(*order, logits.dim() - 1).view(-1, logits.shape[-1]), order
    except RuntimeError:
        return None


def resolve_impl(impl: str, logits: torch.Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    if impl == "auto":
        from .kernels import triton_available

        # The kernel computes in fp32: fp64 logits take the fp64 reference.
        use = logits.is_cuda and logits.dtype != torch.float64 and triton_available()
        return "triton" if use else "torch"
    return impl


def compute_shard_stats(
    rows: torch.Tensor,
    labels: torch.Tensor,
    shard: VocabShard,
    k: int,
    impl: str,
    chunk_tokens: int | None = None,
) -> ShardStats:
    """Statistics of one 2-D shard with the chosen implementation."""
    if impl == "triton":
        from .kernels import shard_stats_triton

        return shard_stats_triton(rows, labels, shard, k)
    return shard_stats_torch(rows, labels, shard, k, chunk_tokens=chunk_tokens)


def tp_rank_size(tp_group) -> tuple[int, int]:
    if tp_group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group=tp_group), dist.get_world_size(group=tp_group)


def merge_over_tp(
    local: ShardStats, tp_group, tp_size: int, labels: torch.Tensor, shard: VocabShard, vocab_size: int
) -> ShardStats:
    """Stack every rank's record and merge; one collective when ``tp_size > 1``.

    The labels, shard width and vocabulary size travel in the gather's header so
    that TP ranks that were handed different batches fail loudly.
    """
    if tp_size == 1:
        return local
    from .tp_merge import gather_shard_stats

    gathered = gather_shard_stats(
        local, tp_group, tp_size, labels=labels, local_vocab=shard.local_size, vocab_size=vocab_size
    )
    return merge_shard_stats(gathered)


def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int = DEFAULT_K,
    vocab_size: int | None = None,
    tp_group=None,
    impl: str = "auto",
    chunk_tokens: int | None = None,
) -> TokenStats:
    """Per-token HE-SNR quantities of ``logits [..., V_local]`` against ``labels [...]``.

    Args:
        logits: bf16/fp16/fp32/fp64 logits (fp64 is computed in fp64 by the
            reference; the kernel refuses it), any leading shape and strides; under tensor
            parallelism the local vocabulary shard (rank ``r`` holds the padded ids
            ``[r * V_local, (r + 1) * V_local)``).
        labels: global target ids with the leading shape of ``logits``; negative
            ids (e.g. -100) and ids >= ``vocab_size`` are not scorable.
        k: size of the candidate set for the top-k entropy.
        vocab_size: the tokenizer's true vocabulary size; ids at or above it are
            Megatron's padding and are excluded.  ``None``: no padding.
        tp_group: tensor-parallel process group the vocabulary is split over;
            ``None`` or a size-1 group means the logits hold the whole vocabulary.
        impl: ``"torch"`` (chunked reference), ``"triton"`` (fused kernel, CUDA) or
            ``"auto"`` (the kernel on CUDA tensors when Triton is installed).
        chunk_tokens: tokens per chunk in the reference path (default: ~64 MiB fp32).

    The result's ``.nll`` is the per-token loss from the same pass ("loss + metric"
    mode: an evaluation step needs no separate cross-entropy over the logits).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError("logits must be a tensor of shape [..., V]")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"logits dtype {logits.dtype} is not supported (bf16, fp16, fp32, fp64)")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:-1]:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels shape {got} must equal the logits' leading shape {tuple(logits.shape[:-1])}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer token ids, got {labels.dtype}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r} ({type(k).__name__})")
    k = int(k)
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    impl = resolve_impl(impl, logits)
    tp_rank, tp_size = tp_rank_size(tp_group)
    local_size = logits.shape[-1]
    vocab_size = check_vocab_size(vocab_size, local_size * tp_size)
    shard = vocab_shard(tp_rank, local_size, vocab_size)

    lead_shape = logits.shape[:-1]
    view = _rows_view(logits)
    if view is None:
        # No single 2-D view exists: handle each slice of the first dim on its own.  The TP
        # ranks first agree on the whole call, so that none makes more slice calls than another.
        if tp_size > 1:
            from .tp_merge import check_tp_agreement

            check_tp_agreement(tp_group, logits.device, n=labels.numel(), k=k, dtype=record_dtype(logits.dtype),
                               local_vocab=local_size, vocab_size=vocab_size, labels=labels)
        parts = [
            token_stats(logits[i], labels[i], k=k, vocab_size=vocab_size, tp_group=tp_group,
                        impl=impl, chunk_tokens=chunk_tokens)
            for i in range(logits.shape[0])
        ]
        return TokenStats(**{
            name: torch.stack([getattr(p, name) for p in parts]) for name in TENSOR_FIELDS
        }, k=k)
    rows, order = view
    rows_labels = labels.permute(*order).reshape(-1) if order else labels.reshape(-1)
    local = compute_shard_stats(rows, rows_labels, shard, k, impl, chunk_tokens)
    merged = merge_over_tp(local, tp_group, tp_size, rows_labels, shard, vocab_size)
    flat = finalize(merged, rows_labels, vocab_size)
    if order == sorted(order):
        return flat.map(lambda x: x.reshape(lead_shape))
    permuted_shape = [lead_shape[d] for d in order]
    inverse = sorted(range(len(order)), key=lambda i: order[i])
    return flat.map(lambda x: x.reshape(permuted_shape).permute(*inverse))
