"""Fused single-pass Triton kernel for the per-shard statistics.

One program handles one token row of a logits shard ``[N, V_local]`` and reads
each of its real columns exactly once, tile by tile, producing the same record as
the PyTorch reference (:func:`megatron_hesnr.metric.shard_stats.shard_stats_torch`):
max, sum of exp(z - max), the owned target logit and the k largest values.

Design (why it is shaped like this):

* **One read.**  The row is streamed in tiles of ``BLOCK`` columns; every
  statistic is updated from the tile while it is in registers.  Rows are
  addressed through their stride, so Megatron's ``[s, b, V]`` logits viewed as
  ``[s * b, V]`` need no contiguous copy.
* **fp32 math.**  Logits are widened to fp32 in registers (bf16/fp16 are exact in
  fp32); the running sum is rescaled online when the max grows.  The sum is kept
  per lane (a ``[BLOCK]`` vector) and reduced once at the end, so a tile costs one
  cross-warp reduction (its max), not two.
* **Top-k by threshold-filtered selection.**  A running multiset of the ``KB``
  largest values seen so far (``KB`` = next power of two >= k, 16 for k = 10)
  lives in registers; its minimum ``thr`` is the bar a new value must clear.  A
  tile whose max does not exceed ``thr`` costs nothing more; otherwise its values
  above ``thr`` are extracted largest-first (a max and a count reduction per
  distinct value, ties taken with their multiplicity) and inserted.  For a row in
  random vocabulary order a row needs about ``KB * (1 + ln(V_local / BLOCK))``
  such rounds in all (each scans one tile), a small fraction of the streaming
  work; a row sorted ascending would be the worst case (every tile searched).
  The method needs no ``tl.topk`` (which arrived only in Triton 3.4).  ``TL_TOPK=True`` instead merges
  every qualifying tile with Triton's bitonic ``tl.topk``; it is kept so both can
  be timed side by side on a GPU (``benchmarks/bench_token_stats.py``).
* **Non-finite rows.**  A NaN or +inf logit turns the lane sum into NaN, a -inf
  logit shows in a per-lane running minimum; either marks the row, whose ``max``
  is then written as NaN (what the merge and ``finalize`` test).  ``sumexp``,
  ``target`` and ``topk`` of such a row are unspecified, as they are never used.
* **Padding.**  Only the first ``real_size`` columns are read; padding columns
  (Megatron's vocabulary padding) are never loaded.
* **Split rows.**  With ``splits`` > 1 the real columns of a row are cut into
  ``splits`` chunks of whole tiles and a 2-D grid runs one program per (row,
  chunk), so that few rows still give enough programs to fill the GPU and a long
  row's serial chain of tiles is shorter.  Each program writes the same record for
  its chunk into ``[splits, N, ...]`` buffers, which the tensor-parallel merge
  (:func:`megatron_hesnr.metric.shard_stats.merge_shard_stats`: max, log-add-exp of the
  sums, the one owned target, top-k of the candidates) combines on the device.  A
  chunk past the real columns writes an empty record.

``TRITON_INTERPRET=1`` (set before Triton is first imported: ``triton.jit`` reads
it at decoration time) runs the same kernel on CPU tensors; the tests use that
against the reference.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext as _no_context

import torch
import triton
import triton.language as tl

from ..shard_stats import ShardStats, merge_shard_stats
from ..vocab import VocabShard

log = logging.getLogger(__name__)

#: Largest k the kernel keeps in registers; larger k falls back to the reference.
MAX_K = 64

_SUPPORTED = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _select_into(x, best, thr, KB: tl.constexpr):
    """Insert the values of ``x`` that beat ``thr`` into the running top-``KB`` multiset.

    ``best`` [KB]: the KB largest values seen so far (unordered, -inf for empty
    slots); ``thr`` = min(best).  Values are taken largest-first; each round
    inserts one distinct value with its multiplicity (at most KB copies), so a
    round can only raise ``thr`` and the loop ends after at most KB rounds.
    """
    slots = tl.arange(0, KB)
    # Values equal to thr cannot change the multiset: strict ">" keeps ties cheap.
    cand = tl.where(x > thr, x, float("-inf"))
    v = tl.max(cand, axis=0)
    while v > thr:
        hit = cand == v
        copies = tl.minimum(tl.sum(hit.to(tl.int32), axis=0), KB)
        for _ in range(copies):
            # Replacing the current minimum keeps the KB largest; once every slot
            # below v holds v, a further copy replaces v by v (a no-op).
            low = tl.argmin(best, axis=0)
            best = tl.where(slots == low, v, best)
        thr = tl.min(best, axis=0)
        cand = tl.where(hit, float("-inf"), cand)
        v = tl.max(cand, axis=0)
    return best, thr


@triton.jit
def _bitonic_into(x, best, thr, KB: tl.constexpr):
    """Same contract as :func:`_select_into`, with Triton's bitonic ``tl.topk``."""
    cand = tl.where(x > thr, x, float("-inf"))
    tile_top = tl.topk(cand, KB)
    both = tl.reshape(tl.join(best, tile_top), [2 * KB])
    best = tl.topk(both, KB)
    return best, tl.min(best, axis=0)


@triton.jit
def _consume_tile(x, m, s_vec, lo_vec, best, thr, KB: tl.constexpr, TL_TOPK: tl.constexpr):
    """Fold one fp32 tile ``x`` [BLOCK] (masked columns = -inf) into the row state."""
    m_tile = tl.max(x, axis=0)
    m_new = tl.maximum(m, m_tile)
    # exp(d) = exp2(d * log2(e)).  (x - m) first, then the base change: the
    # subtraction is nearly exact, so the exponent carries no error proportional
    # to |m| (an FMA x*c - m*c would, the same for every term of the sum).
    alpha = tl.exp2((m - m_new) * 1.4426950408889634)
    s_vec = s_vec * alpha + tl.exp2((x - m_new) * 1.4426950408889634)
    lo_vec = tl.minimum(lo_vec, x)
    if m_tile > thr:
        if TL_TOPK:
            best, thr = _bitonic_into(x, best, thr, KB)
        else:
            best, thr = _select_into(x, best, thr, KB)
    return m_new, s_vec, lo_vec, best, thr


@triton.jit
def _shard_stats_kernel(
    logits_ptr,  # [N, V_local] bf16/fp16/fp32/fp64, rows at stride_row, columns at stride_col
    labels_ptr,  # [N] integer global token ids, at stride_label
    max_ptr,  # [SPLITS, N] fp32 out: max of the chunk's logits, NaN if one is non-finite
    sum_ptr,  # [SPLITS, N] fp32 out: sum over the chunk's columns of exp(z - max)
    tgt_ptr,  # [SPLITS, N] fp32 out: target logit if the chunk holds the label, else -inf
    top_ptr,  # [SPLITS, N, K] fp32 out (contiguous): K largest of the chunk, descending, -inf padded
    n_rows,  # N: records of chunk c start at c * N
    stride_row,
    stride_col,
    stride_label,
    start,  # first global id of the shard
    real,  # leading real columns of the shard (> 0; the host handles 0)
    chunk,  # columns per chunk (a multiple of BLOCK; >= real when the row is not split)
    K: tl.constexpr,  # values written per row (<= KB)
    KB: tl.constexpr,  # running top-k width kept in registers (power of two >= K)
    BLOCK: tl.constexpr,  # columns per tile (power of two)
    COL_CONTIG: tl.constexpr,  # stride_col == 1: plain vectorisable addressing
    TL_TOPK: tl.constexpr,  # merge tiles with tl.topk instead of selection
):
    row = tl.program_id(0).to(tl.int64)  # int64: N * stride_row exceeds 2**31
    part = tl.program_id(1).to(tl.int64)  # which column chunk of the row (0 when not split)
    c0 = part * chunk
    # Columns of this chunk (< 2**31; 0 for a chunk past the real columns).
    width = tl.maximum(tl.minimum(real - c0, chunk), 0).to(tl.int32)
    rec = part * n_rows + row
    row_ptr = logits_ptr + row * stride_row
    chunk_ptr = row_ptr + c0 * stride_col
    offs = tl.arange(0, BLOCK)
    if COL_CONTIG:
        col_off = offs
    else:
        col_off = offs.to(tl.int64) * stride_col

    m = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), axis=0)
    s_vec = tl.zeros([BLOCK], dtype=tl.float32)
    lo_vec = tl.full([BLOCK], float("inf"), tl.float32)
    best = tl.full([KB], float("-inf"), tl.float32)
    thr = tl.min(best, axis=0)

    n_full = width // BLOCK
    tile_step = tl.full([], BLOCK, tl.int64) * stride_col
    # Full tiles need no mask.  The next tile is loaded before the current one is
    # processed so that its memory latency overlaps the arithmetic.
    if n_full > 0:
        x_next = tl.load(chunk_ptr + col_off)
        for t in range(1, n_full):
            x = x_next
            x_next = tl.load(chunk_ptr + t * tile_step + col_off)
            m, s_vec, lo_vec, best, thr = _consume_tile(
                x.to(tl.float32), m, s_vec, lo_vec, best, thr, KB, TL_TOPK
            )
        m, s_vec, lo_vec, best, thr = _consume_tile(
            x_next.to(tl.float32), m, s_vec, lo_vec, best, thr, KB, TL_TOPK
        )
    tail = width - n_full * BLOCK
    if tail > 0:
        keep = offs < tail
        x = tl.load(chunk_ptr + n_full * tile_step + col_off, mask=keep, other=float("-inf"))
        x = x.to(tl.float32)
        m_keep, s_vec, lo_vec_t, best, thr = _consume_tile(
            x, m, s_vec, lo_vec, best, thr, KB, TL_TOPK
        )
        m = m_keep
        # Masked columns read as -inf; only real columns may flag a -inf logit.
        lo_vec = tl.where(keep, lo_vec_t, lo_vec)

    s = tl.sum(s_vec, axis=0)
    lo = tl.min(lo_vec, axis=0)
    bad = (s != s) | (m == float("inf")) | (lo == float("-inf"))
    tl.store(max_ptr + rec, tl.where(bad, float("nan"), m))
    tl.store(sum_ptr + rec, s)

    # The target is one element of the row: a single scalar load, not a second pass.
    local = tl.load(labels_ptr + row * stride_label).to(tl.int64) - start
    owned = (local >= c0) & (local < c0 + width)
    safe = tl.where(owned, local, 0)
    z_t = tl.load(row_ptr + safe * stride_col).to(tl.float32)
    tl.store(tgt_ptr + rec, tl.where(owned, z_t, float("-inf")))

    # Sort the KB kept values (descending) by repeated extraction; KB is small.
    slots = tl.arange(0, KB)
    out = tl.full([KB], float("-inf"), tl.float32)
    for i in tl.static_range(K):
        v = tl.max(best, axis=0)
        at = tl.argmax(best, axis=0)
        out = tl.where(slots == i, v, out)
        best = tl.where(slots == at, float("-inf"), best)
    tl.store(top_ptr + rec * K + slots, out, mask=slots < K)


def _is_interpreted() -> bool:
    # triton.jit decides at decoration time (TRITON_INTERPRET when this module was imported).
    return type(_shard_stats_kernel).__name__ == "InterpretedFunction"


def has_tl_topk() -> bool:
    """True when this Triton has ``tl.topk`` (needed only for ``mode='bitonic'``)."""
    return hasattr(tl, "topk") and hasattr(tl, "join")


def default_launch(real_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a shard with ``real_size`` real columns.

    1024 columns over 4 warps: 8 values per thread, one 16-byte load each for bf16,
    72 registers (sm_90 build), so about 7 programs share an SM and keep enough
    loads in flight.  Small tiles also make each selection round cheap (a round
    scans one tile) while the number of rounds grows only with log(V / BLOCK).
    """
    block = min(1024, triton.next_power_of_2(max(real_size, 16)))
    warps = max(1, min(4, block // 256))
    return block, warps


#: Programs one SM runs at once with the default launch (72 registers x 128 threads).
PROGRAMS_PER_SM = 7
#: Most chunks per row (the grid's second axis holds at most 65535 programs).
MAX_SPLITS = 65535
#: Largest default split; the benchmark times up to 16 (``splits`` may be any positive int).
MAX_DEFAULT_SPLITS = 16
#: A chunk keeps at least this many tiles, so its fixed cost (final reductions,
#: top-k sort, record store, its share of the merge) stays small next to its reads.
MIN_CHUNK_TILES = 4
#: SM count assumed off CUDA (interpreter runs): an H100/H200's.
NOMINAL_SM_COUNT = 132


def default_splits(n_rows: int, real_size: int, block: int, sm_count: int = NOMINAL_SM_COUNT) -> int:
    """Column chunks per row so that ``n_rows * splits`` programs fill two waves.

    With ``n_rows`` >= 2 waves of programs (2 x 7 x 132 = 1848 on an H200) a row is
    not split: splitting then adds the merge without adding parallelism.  Below
    that, rows are split in powers of two while each chunk keeps at least
    ``MIN_CHUNK_TILES`` tiles, up to ``MAX_DEFAULT_SPLITS``.  This is the starting
    point the GPU benchmark (``benchmarks/bench_token_stats.py``) is there to confirm.
    """
    target = 2 * PROGRAMS_PER_SM * max(1, sm_count)
    splits = 1
    while (splits < MAX_DEFAULT_SPLITS and n_rows * splits < target
           and real_size >= 2 * splits * MIN_CHUNK_TILES * block):
        splits *= 2
    return splits


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return NOMINAL_SM_COUNT


def shard_stats_triton(
    rows: torch.Tensor,
    labels: torch.Tensor,
    shard: VocabShard,
    k: int,
    *,
    block: int | None = None,
    num_warps: int | None = None,
    mode: str = "select",
    splits: int | None = None,
) -> ShardStats:
    """Statistics of a 2-D logits shard ``[N, V_local]`` in one pass (see module doc).

    Args:
        rows: logits shard; any row stride, any column stride (stride 1 is fastest).
        labels: ``[N]`` integer global token ids.
        shard: the shard's global ids and real (non-padding) width.
        k: values kept per row; ``k > MAX_K`` uses the PyTorch reference instead.
        block, num_warps: tile width (power of two) and warps per program; default
            from :func:`default_launch`.
        mode: ``"select"`` (threshold-filtered selection; any Triton) or
            ``"bitonic"`` (``tl.topk`` merge; Triton >= 3.4).
        splits: column chunks per row (split-row mode).  Each chunk is its own
            program writing a partial record; the records are merged on the device
            by :func:`~megatron_hesnr.metric.shard_stats.merge_shard_stats`, the merge the
            tensor-parallel path uses.  Default from :func:`default_splits`.
    """
    if rows.dim() != 2:
        raise ValueError(f"shard_stats_triton expects 2-D logits [N, V_local], got {tuple(rows.shape)}")
    if rows.dtype == torch.float64:
        raise TypeError("impl='triton' computes in fp32 and would round fp64 logits (near-ties flip "
                        "in_topk/top1, values above fp32's range overflow): use impl='torch' for fp64")
    if rows.dtype not in _SUPPORTED:
        raise TypeError(f"logits dtype {rows.dtype} is not supported (bf16, fp16, fp32)")
    n, local_size = rows.shape
    if local_size != shard.local_size:
        raise ValueError(f"logits have {local_size} columns but the shard says V_local={shard.local_size}")
    if labels.shape != (n,):
        raise ValueError(f"labels shape {tuple(labels.shape)} must be ({n},) to match the logits rows")
    if not (0 <= shard.real_size <= local_size):
        raise ValueError(f"shard real_size={shard.real_size} must be in [0, {local_size}]")
    if mode not in ("select", "bitonic"):
        raise ValueError(f"mode={mode!r} is not 'select' or 'bitonic'")
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int)
                               or not 1 <= splits <= MAX_SPLITS):
        raise ValueError(f"splits={splits!r} must be an integer in [1, {MAX_SPLITS}] (column chunks per row)")
    if not rows.is_cuda and not _is_interpreted():
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before Triton "
            "is imported); use impl='torch' on CPU"
        )
    if k > MAX_K:
        from ..shard_stats import shard_stats_torch

        log.warning("k=%d exceeds the kernel's register top-k (%d): using the PyTorch reference", k, MAX_K)
        return shard_stats_torch(rows, labels, shard, k)

    dev = rows.device
    if shard.real_size == 0 or n == 0:
        # A shard made only of padding contributes nothing (as in the reference).
        return ShardStats(
            torch.full((n,), float("-inf"), device=dev), torch.zeros(n, device=dev),
            torch.full((n,), float("-inf"), device=dev), torch.full((n, k), float("-inf"), device=dev),
        )

    labels = labels.to(device=dev)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer token ids, got {labels.dtype}")
    kb = max(2, triton.next_power_of_2(k))
    d_block, d_warps = default_launch(shard.real_size)
    block = block or d_block
    if mode == "bitonic":
        if not has_tl_topk():
            raise RuntimeError(f"mode='bitonic' needs tl.topk (Triton >= 3.4); this is Triton {triton.__version__}")
        block = max(block, kb)  # tl.topk needs k <= tile width
    if block & (block - 1):
        raise ValueError(f"block={block} must be a power of two")
    if splits is None:
        splits = default_splits(n, shard.real_size, block, _sm_count(dev))
    # Chunks are whole tiles; with few real columns the last chunks hold none
    # (they write an empty record: max -inf, sum 0, no target, -inf top-k).
    per_chunk = -(-shard.real_size // splits)
    chunk = -(-per_chunk // block) * block
    parts = ShardStats(
        torch.empty((splits, n), dtype=torch.float32, device=dev),
        torch.empty((splits, n), dtype=torch.float32, device=dev),
        torch.empty((splits, n), dtype=torch.float32, device=dev),
        torch.empty((splits, n, k), dtype=torch.float32, device=dev),
    )
    # Triton launches on the current CUDA device: make it the logits' device.
    with torch.cuda.device(dev) if rows.is_cuda else _no_context():
        _shard_stats_kernel[(n, splits)](
            rows, labels, parts.max, parts.sumexp, parts.target, parts.topk,
            n, rows.stride(0), rows.stride(1), labels.stride(0),
            shard.start, shard.real_size, chunk,
            K=k, KB=kb, BLOCK=block, COL_CONTIG=rows.stride(1) == 1, TL_TOPK=mode == "bitonic",
            num_warps=num_warps or d_warps,
        )
    if splits == 1:
        return ShardStats(parts.max[0], parts.sumexp[0], parts.target[0], parts.topk[0])
    # Device-side merge of the chunk records (no host synchronisation).
    return merge_shard_stats(parts)
