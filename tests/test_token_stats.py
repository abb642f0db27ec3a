"""token_stats (PyTorch reference) against the float64 brute force."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import megatron_hesnr as mh
from brute_force import brute_tokens

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _check_tokens(stats: mh.TokenStats, ref, atol=1e-6):
    flat = stats.map(lambda x: x.reshape(-1))
    for i, r in enumerate(ref):
        if r is None:
            assert not flat.valid[i] and not flat.in_topk[i] and not flat.top1[i]
            assert math.isnan(flat.entropy[i]) and math.isnan(flat.logp[i])
            continue
        assert flat.valid[i], i
        assert bool(flat.in_topk[i]) == r["in_topk"], i
        assert bool(flat.top1[i]) == r["top1"], i
        # H_k comes from exact copies of the top-k logits in float64: ~1e-12.
        assert abs(float(flat.entropy[i]) - r["entropy"]) <= 1e-9, i
        # log p carries the fp32 sum-exp of the shard pass.
        assert abs(float(flat.logp[i]) - r["logp"]) <= atol * max(1.0, abs(r["logp"])), i
        assert abs(float(flat.logq[i]) - r["logq"]) <= 1e-9 * max(1.0, abs(r["logq"])), i


@st.composite
def cases(draw):
    lead = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    v = draw(st.integers(2, 64))
    pad = draw(st.integers(0, min(7, v - 1)))
    vocab_size = v - pad if draw(st.booleans()) else None
    dtype = draw(st.sampled_from(DTYPES))
    k = draw(st.sampled_from([1, 2, 3, 10, 16]))
    seed = draw(st.integers(0, 2**31 - 1))
    ties = draw(st.booleans())
    scale = draw(st.sampled_from([0.5, 3.0, 20.0]))
    return lead, v, vocab_size, dtype, k, seed, ties, scale


def make_inputs(lead, v, vocab_size, dtype, seed, ties, scale, bad_rows=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, v, generator=g) * scale
    if ties:  # integer logits: many exact ties, also at the k-th value
        x = x.round()
    vs = v if vocab_size is None else vocab_size
    y = torch.randint(0, vs, tuple(lead), generator=g)
    flat_x, flat_y = x.view(-1, v), y.view(-1)
    n = flat_y.numel()
    if bad_rows and n >= 3:
        flat_y[0] = -100  # ignore label
        flat_x[1, int(torch.randint(0, vs, (1,), generator=g))] = float("nan")
        flat_x[2, 0] = float("inf") if n % 2 else float("-inf")
        if vs < v:  # a non-finite value in padding must not matter
            flat_x[n - 1, vs] = float("nan")
    if n >= 5:
        flat_y[4] = vs  # first padding id / out of range: not scorable
    return x.to(dtype), y


@settings(max_examples=120, deadline=None)
@given(cases())
def test_matches_float64_brute_force(case):
    lead, v, vocab_size, dtype, k, seed, ties, scale = case
    logits, labels = make_inputs(lead, v, vocab_size, dtype, seed, ties, scale)
    stats = mh.token_stats(logits, labels, k=k, vocab_size=vocab_size, impl="torch")
    assert stats.shape == labels.shape
    # The oracle sees the same (bf16/fp16-rounded) values in float64.
    _check_tokens(stats, brute_tokens(logits, labels, k=k, vocab_size=vocab_size))


def test_one_hot_uniform_and_ties_analytic():
    v, k = 50, 10
    big = -1.0e4  # exp(-1e4) is 0 in float64: analytically exact cases
    rows = []
    one_hot = torch.full((v,), big); one_hot[7] = 0.0
    rows.append(one_hot)
    uniform_k = torch.full((v,), big); uniform_k[:k] = 1.5
    rows.append(uniform_k)
    tie3 = torch.full((v,), big); tie3[[3, 9, 20]] = 2.0
    rows.append(tie3)
    tie4 = torch.full((v,), big); tie4[[3, 9, 20, 30]] = 2.0
    rows.append(tie4)
    logits = torch.stack(rows)
    labels = torch.tensor([7, 0, 9, 30])
    s = mh.token_stats(logits, labels, k=k)
    assert s.entropy[0] == 0.0 and s.logp[0] == 0.0 and s.top1[0]
    assert s.entropy[1] == pytest.approx(math.log(k), abs=1e-12)
    assert s.entropy[2] == pytest.approx(math.log(3), abs=1e-12)
    assert s.entropy[3] == pytest.approx(math.log(4), abs=1e-12)
    assert s.in_topk.all() and s.top1.all()  # ties with the max count as top-1
    acc = mh.HESNRAccumulator()
    acc.update(s)
    r = acc.compute()
    # ln 3 < (ln 3 + ln 4)/2 < ln 4 and ln 10: rows 1 and 3 are high-entropy.
    assert r["num_high_entropy"] == 2
    assert r["hesnr"] == pytest.approx((0.1 / math.log(10) + 0.25 / math.log(4)) / 2, rel=1e-12)


def test_target_tied_at_kth_value_is_inside():
    x = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0]])
    s = mh.token_stats(x, torch.tensor([3]), k=3)
    assert s.in_topk[0] and not s.top1[0]
    s = mh.token_stats(x, torch.tensor([4]), k=3)
    assert not s.in_topk[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_size_does_not_change_results(dtype):
    logits, labels = make_inputs([6, 7], 97, 90, dtype, seed=3, ties=False, scale=4.0)
    ref = mh.token_stats(logits, labels, vocab_size=90, chunk_tokens=1000)
    for chunk in (1, 5, 41):
        s = mh.token_stats(logits, labels, vocab_size=90, chunk_tokens=chunk)
        for name in ("entropy", "logq"):
            torch.testing.assert_close(getattr(s, name), getattr(ref, name), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(s.logp, ref.logp, rtol=1e-7, atol=1e-7, equal_nan=True)
        for name in ("in_topk", "top1", "valid"):
            assert torch.equal(getattr(s, name), getattr(ref, name))


def test_strided_and_transposed_layouts():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, 40, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 33, (4, 6), generator=g)
    ref = mh.token_stats(base[..., :33].contiguous(), labels, k=10)
    # Column slice (row stride 40), Megatron-style [s, b, V] transposed to [b, s, V],
    # and a layout with no 2-D view (every other column block).
    sliced = base[..., :33]
    sbv = base.transpose(0, 1).contiguous().transpose(0, 1)[..., :33]
    wide = torch.randn(4, 12, 33, generator=g).to(torch.bfloat16)
    wide[:, ::2] = base[..., :33]
    no_view = wide[:, ::2].transpose(0, 1).transpose(0, 1)
    for x in (sliced, sbv, no_view):
        s = mh.token_stats(x, labels, k=10)
        assert s.shape == labels.shape
        torch.testing.assert_close(s.entropy, ref.entropy, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(s.logp, ref.logp, rtol=1e-7, atol=1e-7, equal_nan=True)
        assert torch.equal(s.in_topk, ref.in_topk)


def test_single_token_and_empty_inputs():
    s = mh.token_stats(torch.tensor([1.0, 2.0, 3.0]), torch.tensor(2))
    assert s.shape == () and s.top1
    e = mh.token_stats(torch.zeros(0, 11), torch.zeros(0, dtype=torch.long))
    assert e.shape == (0,)


def test_vocab_smaller_than_k():
    x = torch.tensor([[0.0, 0.0, 0.0, 9.0]])
    s = mh.token_stats(x, torch.tensor([1]), k=10, vocab_size=3)
    assert s.entropy[0] == pytest.approx(math.log(3), abs=1e-12)
    assert s.in_topk[0] and s.top1[0]


@pytest.mark.parametrize(
    "kwargs, labels, err",
    [
        ({}, torch.zeros(3, dtype=torch.long), "labels shape"),
        ({}, torch.zeros(2, 4, dtype=torch.float32), "integer"),
        ({"impl": "cuda"}, None, "impl="),
        ({"vocab_size": 9}, None, "vocab_size=9"),
        ({"k": 0}, None, "k must"),
        ({"chunk_tokens": 0}, None, "chunk_tokens"),
    ],
)
def test_bad_arguments_are_named(kwargs, labels, err):
    x = torch.randn(2, 4, 8)
    y = torch.zeros(2, 4, dtype=torch.long) if labels is None else labels
    with pytest.raises((ValueError, TypeError), match=err):
        mh.token_stats(x, y, **kwargs)


def test_triton_impl_without_cuda_is_a_clear_error():
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton not installed")
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    # "auto" never picks the kernel for CPU tensors.
    x, y = torch.randn(3, 20), torch.zeros(3, dtype=torch.long)
    ref = mh.token_stats(x, y, impl="torch")
    torch.testing.assert_close(mh.token_stats(x, y, impl="auto").logp, ref.logp)
