"""The fused Triton kernel against the PyTorch reference, on CPU via TRITON_INTERPRET=1.

``triton.jit`` (including Triton's own ``tl.max``/``tl.argmin`` helpers) decides
between compiling and interpreting when it is imported, so the variable must be
set before anything imports Triton.  Inside a normal test run that cannot be
guaranteed (megatron-core or another test may have imported it already), so this
file re-runs itself in a fresh ``python -m pytest`` process with
``TRITON_INTERPRET=1``; there the cases below run one by one.  The interpreter is
slow: shapes are small, with tiny tiles so that every row still spans several
tiles plus a tail.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET", "") == "1"
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# The interpreter evaluates -inf - (-inf) in numpy for rows flagged non-finite.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

if not INTERPRETED:

    def test_kernel_cases_under_triton_interpreter():
        env = dict(os.environ, TRITON_INTERPRET="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, "kernel cases failed under TRITON_INTERPRET=1:\n" + proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout, proc.stdout[-2000:]

else:
    from megatron_hesnr import token_stats
    from megatron_hesnr.metric.shard_stats import shard_stats_torch
    from megatron_hesnr.metric.vocab import VocabShard


def in_interpreter(fn):
    """Collect ``fn`` only in the TRITON_INTERPRET=1 process (the driver above runs it)."""
    fn.__test__ = INTERPRETED
    return fn


@pytest.fixture(scope="module")
def kmod():
    import megatron_hesnr.metric.kernels.triton_shard_stats as mod

    assert mod._is_interpreted(), "TRITON_INTERPRET=1 did not take effect"
    return mod


def _truth_sumexp(rows: torch.Tensor, real: int) -> torch.Tensor:
    x = rows[:, :real].double()
    return torch.exp(x - x.amax(dim=1, keepdim=True)).sum(dim=1)


def check_against_reference(kern, ref, rows, real):
    """Exact max/target/top-k; sum-exp no further from fp64 truth than the reference's + 1e-6."""
    bad = torch.isnan(ref.max)
    assert torch.equal(torch.isnan(kern.max), bad), "kernel and reference disagree on non-finite rows"
    ok = ~bad
    assert torch.equal(kern.max[ok], ref.max[ok])
    assert torch.equal(kern.target[ok], ref.target[ok])
    assert torch.equal(kern.topk[ok], ref.topk[ok])
    if real > 0 and ok.any():
        truth = _truth_sumexp(rows[ok], real)
        err_k = ((kern.sumexp[ok].double() - truth) / truth).abs()
        err_r = ((ref.sumexp[ok].double() - truth) / truth).abs()
        assert torch.all(err_k <= err_r + 1e-6), (err_k.max().item(), err_r.max().item())
    else:
        assert torch.equal(kern.sumexp[ok], ref.sumexp[ok])


def _labels(n, start, local_size, gen):
    """Owned, not owned (other shards), negative (-100) and padding ids."""
    lab = torch.randint(max(0, start - local_size), start + 2 * local_size, (n,), generator=gen)
    lab[0] = -100
    if n > 1:
        lab[1] = start  # first owned column
    return lab


CASES = [
    # n, V_local, real, start, dtype, k, block
    pytest.param(5, 37, 37, 0, FP32, 10, 16, id="odd-V-fp32-k10"),
    pytest.param(4, 301, 290, 301, BF16, 10, 64, id="rank1-padding-bf16"),
    pytest.param(3, 129, 129, 0, FP16, 16, 32, id="fp16-k16"),
    pytest.param(4, 50, 50, 0, FP32, 1, 16, id="k1"),
    pytest.param(3, 40, 7, 80, BF16, 10, 16, id="real-lt-k"),
    pytest.param(3, 40, 0, 120, FP32, 10, 16, id="all-padding-shard"),
]


@in_interpreter
@pytest.mark.parametrize("splits", [1, 2, 16])
@pytest.mark.parametrize("n,v,real,start,dtype,k,block", CASES)
def test_kernel_matches_reference(kmod, n, v, real, start, dtype, k, block, splits):
    """splits=2: a full chunk and a tail chunk; 16: most chunks lie past the real columns."""
    gen = torch.Generator().manual_seed(n * 1000 + v)
    rows = (torch.randn(n, v, generator=gen) * 4).to(dtype)
    labels = _labels(n, start, v, gen)
    shard = VocabShard(start, v, real)
    kern = kmod.shard_stats_triton(rows, labels, shard, k, block=block, splits=splits)
    ref = shard_stats_torch(rows, labels, shard, k)
    check_against_reference(kern, ref, rows, real)
    assert kern.topk.shape == (n, k) and kern.topk.dtype == torch.float32
    assert kern.max.shape == kern.sumexp.shape == kern.target.shape == (n,)


@in_interpreter
def test_split_rows_ties_across_chunk_borders(kmod):
    """The largest values sit on both sides of every chunk border, with multiplicity.

    V=70, block=16, splits=4: chunks [0,32) [32,64) [64,70) and one empty chunk
    (splits=4 -> 18 columns per chunk -> rounded up to two tiles).  The merged top-k
    must keep every copy of a tied value and the target of the chunk that owns it.
    """
    gen = torch.Generator().manual_seed(5)
    v = 70
    base = torch.randn(4, v, generator=gen)
    border = [31, 32, 63, 64, 69]
    base[0, border] = 9.0  # five copies of the max, split over three chunks
    base[1, :] = 1.0  # constant row: every value ties, in every chunk
    base[2, [0, 31, 32, 63, 64]] = torch.tensor([5.0, 7.0, 7.0, 6.0, 6.0])
    base[3] = torch.arange(v, dtype=torch.float32) % 32 / 4  # the same ramp in every chunk
    labels = torch.tensor([32, 64, 31, 69])
    shard = VocabShard(0, v, v)
    for dtype in (FP32, BF16):
        rows = base.to(dtype)
        for k in (1, 10, 16):
            kern = kmod.shard_stats_triton(rows, labels, shard, k, block=16, splits=4)
            check_against_reference(kern, shard_stats_torch(rows, labels, shard, k), rows, v)
        assert kern.topk[0, :5].tolist() == [9.0] * 5


@in_interpreter
def test_split_rows_non_finite_in_one_chunk(kmod):
    """A NaN/inf/-inf in any one chunk marks the merged row; one in padding does not."""
    v, real = 70, 66
    rows = torch.randn(6, v) * 2
    rows[0, 40] = float("nan")  # second chunk only
    rows[1, 65] = float("inf")  # last real column, in the short third chunk
    rows[2, 0] = float("-inf")  # first chunk
    rows[3, 33:real] = float("-inf")  # whole chunks of -inf
    rows[4, 67] = float("nan")  # padding: ignored
    labels = torch.tensor([1, 65, 64, 33, 66, 5])
    shard = VocabShard(0, v, real)
    for splits in (2, 4):
        kern = kmod.shard_stats_triton(rows, labels, shard, 10, block=16, splits=splits)
        assert torch.isnan(kern.max).tolist() == [True, True, True, True, False, False]
        check_against_reference(kern, shard_stats_torch(rows, labels, shard, 10), rows, real)


@in_interpreter
def test_split_rows_strided_layout(kmod):
    """Megatron's [s, b, V] view (padded row pitch) split into chunks, no copy."""
    gen = torch.Generator().manual_seed(6)
    s, b, v = 3, 2, 45
    sbv = (torch.randn(s, b, v + 3, generator=gen) * 3).to(BF16)[..., :v]
    rows = sbv.reshape(s * b, v)
    labels = torch.randint(0, v, (s * b,), generator=gen)
    shard = VocabShard(0, v, v)
    check_against_reference(
        kmod.shard_stats_triton(rows, labels, shard, 10, block=16, splits=3),
        shard_stats_torch(rows, labels, shard, 10), rows, v,
    )


@in_interpreter
def test_default_splits_fill_two_waves(kmod):
    # Many rows: no split (the grid is already two waves of 7 x 132 programs).
    assert kmod.default_splits(8192, 151936, 1024) == 1
    assert kmod.default_splits(1848, 18992, 1024) == 1
    # Few rows of a wide shard: split until two waves, each chunk >= 4 tiles.
    assert kmod.default_splits(256, 151936, 1024) == 8
    assert kmod.default_splits(16, 151936, 1024) == 16
    assert kmod.default_splits(16, 18992, 1024) == 4  # 4 chunks of 4748 columns
    # Narrow rows are never split below MIN_CHUNK_TILES tiles per chunk.
    assert kmod.default_splits(4, 5000, 1024) == 1
    assert kmod.default_splits(2, 151936, 1024, sm_count=1) == 8


@in_interpreter
def test_strided_rows_and_columns(kmod):
    """Megatron's [s, b, V] seen as rows without a copy, and a column stride != 1."""
    gen = torch.Generator().manual_seed(1)
    s, b, v = 3, 2, 45
    sbv = (torch.randn(s, b, v + 3, generator=gen) * 3).to(BF16)[..., :v]  # padded row pitch
    rows = sbv.reshape(s * b, v)
    assert rows.data_ptr() == sbv.data_ptr() and rows.stride(0) == v + 3
    labels = torch.randint(0, v, (s * b,), generator=gen)
    shard = VocabShard(0, v, v)
    check_against_reference(
        kmod.shard_stats_triton(rows, labels, shard, 10, block=16),
        shard_stats_torch(rows, labels, shard, 10), rows, v,
    )
    cols = (torch.randn(v, 4, generator=gen) * 3).t()  # [4, V] with strides (1, 4)
    assert cols.stride(1) != 1
    labels = torch.randint(0, v, (4,), generator=gen)
    check_against_reference(
        kmod.shard_stats_triton(cols, labels, shard, 10, block=16),
        shard_stats_torch(cols, labels, shard, 10), cols, v,
    )


@in_interpreter
def test_ties_and_adversarial_orders(kmod):
    """Integer logits (many ties), a constant row, ascending and descending rows."""
    gen = torch.Generator().manual_seed(2)
    v = 70
    rows = torch.stack([
        torch.randint(-3, 4, (v,), generator=gen).float(),
        torch.full((v,), 2.5),
        torch.arange(v, dtype=torch.float32) / 8,  # every tile beats the running top-k
        torch.arange(v, 0, -1, dtype=torch.float32) / 8,
        torch.randint(0, 2, (v,), generator=gen).float() * 5,  # two values, heavy ties
    ]).to(BF16)
    labels = torch.tensor([0, 5, v - 1, 0, 3])
    shard = VocabShard(0, v, v)
    for k in (1, 10, 16):
        check_against_reference(
            kmod.shard_stats_triton(rows, labels, shard, k, block=16),
            shard_stats_torch(rows, labels, shard, k), rows, v,
        )


@in_interpreter
def test_non_finite_rows(kmod):
    """NaN / +inf / -inf in a real column mark the row; in a padding column they do not."""
    v, real = 40, 33
    rows = torch.randn(7, v) * 2
    rows[0, 5] = float("nan")
    rows[1, 32] = float("inf")  # last real column (in the tail tile)
    rows[2, 0] = float("-inf")
    rows[3, :real] = float("-inf")
    rows[4, 35] = float("nan")  # padding: ignored
    rows[5, 33:] = float("-inf")  # padding: ignored
    rows[6, 20] = float("nan")
    rows[6, 21] = float("inf")
    labels = torch.arange(7)
    shard = VocabShard(0, v, real)
    for dtype in (FP32, BF16):
        x = rows.to(dtype)
        kern = kmod.shard_stats_triton(x, labels, shard, 10, block=16)
        ref = shard_stats_torch(x, labels, shard, 10)
        assert torch.isnan(kern.max).tolist() == [True, True, True, True, False, False, True]
        check_against_reference(kern, ref, x, real)


@in_interpreter
@pytest.mark.parametrize("dtype", [BF16, FP16, FP32])
def test_token_stats_triton_equals_torch(kmod, dtype):
    """End to end under TP=1 with vocabulary padding, Megatron's [s, b, V] layout."""
    gen = torch.Generator().manual_seed(3)
    s, b, v, vocab = 4, 2, 67, 60
    logits = (torch.randn(b, s, v, generator=gen) * 3).to(dtype).transpose(0, 1)  # [s, b, V] view
    labels = torch.randint(0, vocab, (s, b), generator=gen)
    labels[0, 0] = -100
    got = token_stats(logits, labels, vocab_size=vocab, impl="triton")
    want = token_stats(logits, labels, vocab_size=vocab, impl="torch")
    for name in ("entropy", "logp", "logq"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-6, atol=1e-6,
                                   equal_nan=True)
    for name in ("in_topk", "top1", "valid"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@in_interpreter
@pytest.mark.skipif(not hasattr(__import__("triton").language, "topk"), reason="tl.topk needs Triton >= 3.4")
def test_bitonic_mode(kmod):
    gen = torch.Generator().manual_seed(4)
    rows = torch.randint(-4, 5, (3, 70), generator=gen).to(BF16)
    labels = torch.tensor([0, 69, 200])
    shard = VocabShard(0, 70, 66)
    check_against_reference(
        kmod.shard_stats_triton(rows, labels, shard, 10, block=16, mode="bitonic"),
        shard_stats_torch(rows, labels, shard, 10), rows, 66,
    )


@in_interpreter
def test_errors_name_the_problem(kmod, monkeypatch):
    shard = VocabShard(0, 8, 8)
    rows, labels = torch.randn(2, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="V_local=9"):
        kmod.shard_stats_triton(rows, labels, VocabShard(0, 9, 9), 10)
    with pytest.raises(ValueError, match="labels shape"):
        kmod.shard_stats_triton(rows, labels[:1], shard, 10)
    with pytest.raises(ValueError, match="mode="):
        kmod.shard_stats_triton(rows, labels, shard, 10, mode="heap")
    with pytest.raises(TypeError, match="integer token ids"):
        kmod.shard_stats_triton(rows, labels.float(), shard, 10)
    for bad in (0, -2, 2.0, True, kmod.MAX_SPLITS + 1):
        with pytest.raises(ValueError, match="splits="):
            kmod.shard_stats_triton(rows, labels, shard, 10, splits=bad)
    monkeypatch.setattr(kmod, "_is_interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        kmod.shard_stats_triton(rows, labels, shard, 10)


@in_interpreter
def test_large_k_falls_back_to_reference(kmod):
    rows, labels = torch.randn(2, 100), torch.tensor([1, 2])
    shard = VocabShard(0, 100, 100)
    got = kmod.shard_stats_triton(rows, labels, shard, kmod.MAX_K + 1)
    assert torch.equal(got.topk, shard_stats_torch(rows, labels, shard, kmod.MAX_K + 1).topk)


@in_interpreter
def test_fp64_is_refused_pointing_to_the_reference(kmod):
    """The kernel computes in fp32; fp64 logits go to impl='torch' (issue 16, case 6)."""
    rows, labels = torch.randn(2, 16, dtype=torch.float64), torch.tensor([1, 2])
    with pytest.raises(TypeError, match="impl='torch'"):
        kmod.shard_stats_triton(rows, labels, VocabShard(0, 16, 16), 10)
    with pytest.raises(TypeError, match="impl='torch'"):
        token_stats(rows, labels, impl="triton")
