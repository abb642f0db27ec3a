"""HESNRAccumulator: aggregates, categories, sweep, merge and serialisation."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import megatron_hesnr as mh
from brute_force import assert_metrics_close, brute_metrics, brute_tokens
from test_token_stats import DTYPES


def peaked_logits(n, v, seed, dtype=torch.float32):
    """Logits with a few near-equal leaders, so many tokens have H_k around ln 2..ln 5."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=g) * 2.0
    lead = torch.randint(1, 7, (n,), generator=g)
    for i in range(n):
        idx = torch.randperm(v, generator=g)[: int(lead[i])]
        x[i, idx] = 8.0 + 0.3 * torch.randn(len(idx), generator=g)
    y = torch.where(torch.rand(n, generator=g) < 0.7, x.argsort(dim=1, descending=True)[:, 1], torch.randint(0, v, (n,), generator=g))
    return x.to(dtype), y


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    v=st.integers(12, 80),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    with_mask=st.booleans(),
    padded=st.booleans(),
)
def test_aggregates_match_brute_force(n, v, seed, dtype, with_mask, padded):
    x, y = peaked_logits(n, v, seed, dtype)
    vocab_size = v - 3 if padded else None
    if padded:
        y = y.clamp(max=v - 4)
    if n > 2:
        x[1, 0] = float("nan")
        y[2] = -100
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.randint(0, 4, (n,), generator=g) if with_mask else None
    stats = mh.token_stats(x, y, vocab_size=vocab_size)
    acc = mh.HESNRAccumulator()
    acc.update(stats, mask)
    got = acc.compute()
    toks = brute_tokens(x, y, vocab_size=vocab_size)
    assert_metrics_close(got, brute_metrics(toks, mask))
    cats = torch.ones(n, dtype=torch.long) if mask is None else mask
    for c, name in enumerate(acc.config.category_names, start=1):
        want = brute_metrics(toks, (cats == c).long())
        if want["num_tokens"] + want["num_invalid"] == 0:
            assert name not in got["by_category"]
        else:
            assert_metrics_close(got["by_category"][name], want)


def test_fp32_and_bf16_inputs_within_1e6_on_larger_batch():
    for dtype in (torch.float32, torch.bfloat16):
        x, y = peaked_logits(400, 1000, seed=11, dtype=dtype)
        acc = mh.HESNRAccumulator()
        acc.update(mh.token_stats(x, y, chunk_tokens=37))
        want = brute_metrics(brute_tokens(x, y))
        assert want["num_high_entropy"] > 30
        assert_metrics_close(acc.compute(), want, rel=1e-6)


def test_empty_high_entropy_set_is_nan_not_an_error():
    x = torch.full((5, 30), -50.0)
    x[:, 0] = 10.0  # confident everywhere: H_k ~ 0
    x[4, 3] = float("inf")
    acc = mh.HESNRAccumulator()
    acc.update(mh.token_stats(x, torch.zeros(5, dtype=torch.long)))
    r = acc.compute()
    assert r["num_high_entropy"] == 0 and math.isnan(r["hesnr"]) and math.isnan(r["he_ppl"])
    assert r["num_invalid"] == 1 and r["num_tokens"] == 4
    assert r["high_entropy_fraction"] == 0.0
    empty = mh.HESNRAccumulator().compute()
    assert empty["num_tokens"] == 0 and math.isnan(empty["ppl"]) and empty["by_category"] == {}


def test_sweep_is_exact_at_bin_edges():
    x, y = peaked_logits(500, 200, seed=5)
    stats = mh.token_stats(x, y)
    mask = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(2))
    acc = mh.HESNRAccumulator(num_bins=64)
    acc.update(stats, mask)
    toks = brute_tokens(x, y)
    edges = acc.config.bin_edges()
    picks = [float(edges[j]) for j in (1, 10, 19, 30, 33, 40, 45, 63)]
    for cat in (None, "action", 2):
        m = mask if cat is None else (mask == (1 if cat == "action" else cat)).long()
        for row in acc.sweep(picks, category=cat):
            assert row["edge"] == row["threshold"]
            want = brute_metrics(toks, m, threshold=row["threshold"])
            assert row["num_high_entropy"] == want["num_high_entropy"]
            # q_y / H_k is exact in float64; p(y) carries the fp32 log-sum-exp.
            assert_metrics_close({"hesnr_topk": row["hesnr_topk"]}, {"hesnr_topk": want["hesnr_topk"]}, rel=1e-9)
            assert_metrics_close({k: row[k] for k in ("hesnr", "he_ppl")},
                                 {k: want[k] for k in ("hesnr", "he_ppl")}, rel=1e-6)
    # The configured threshold (not an edge) comes from its exact sums.
    (row,) = acc.sweep([mh.DEFAULT_THRESHOLD])
    assert row["hesnr"] == acc.compute()["hesnr"]
    # Between edges: rounded up to the next edge, which is reported.
    (row,) = acc.sweep([float(edges[20]) + 1e-3])
    assert row["edge"] == float(edges[21])
    with pytest.raises(ValueError, match="outside"):
        acc.sweep([0.0])


def test_histogram_counts_every_valid_scored_token():
    x, y = peaked_logits(300, 100, seed=9)
    x[0, 5] = float("nan")
    acc = mh.HESNRAccumulator(num_bins=100)
    acc.update(mh.token_stats(x, y))
    h = acc.histogram()
    assert len(h["edges"]) == 101 and len(h["count"]) == 100
    assert sum(h["count"]) == 299
    toks = [t for t in brute_tokens(x, y) if t is not None]
    assert sum(h["count_in_topk"]) == sum(t["in_topk"] for t in toks)
    w = math.log(10) / 100
    for t in toks[:50]:
        b = max(0, math.ceil(t["entropy"] / w - 1e-9) - 1)
        assert h["count"][min(b, 99)] >= 1


def test_merge_and_state_round_trip_equal_one_pass():
    x, y = peaked_logits(240, 120, seed=4)
    mask = torch.randint(0, 4, (240,), generator=torch.Generator().manual_seed(0))
    whole = mh.HESNRAccumulator()
    whole.update(mh.token_stats(x, y), mask)
    parts = []
    for sl in (slice(0, 100), slice(100, 170), slice(170, 240)):
        a = mh.HESNRAccumulator()
        a.update(mh.token_stats(x[sl], y[sl]), mask[sl])
        parts.append(json.loads(json.dumps(a.state_dict())))  # through JSON text
    merged = mh.HESNRAccumulator.from_state_dict(parts[0])
    for p in parts[1:]:
        merged.merge(mh.HESNRAccumulator.from_state_dict(p))
    torch.testing.assert_close(merged.state, whole.state, rtol=1e-13, atol=1e-12)
    again = mh.HESNRAccumulator().load_state_dict(json.loads(json.dumps(whole.state_dict())))
    assert torch.equal(again.state, whole.state)


def test_invalid_use_is_refused_with_a_named_reason():
    acc = mh.HESNRAccumulator()
    s = mh.token_stats(torch.randn(2, 3, 20), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask shape"):
        acc.update(s, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="categories"):
        acc.update(s, torch.full((2, 3), 4))
    with pytest.raises(TypeError, match="integer"):
        acc.update(s, torch.ones(2, 3))
    with pytest.raises(ValueError, match="different configs"):
        acc.merge(mh.HESNRAccumulator(num_bins=10))
    with pytest.raises(ValueError, match="threshold"):
        mh.AccumulatorConfig(threshold=3.0)
    with pytest.raises(ValueError, match="config"):
        mh.HESNRAccumulator(num_bins=10).load_state_dict(acc.state_dict())
    acc.update(s, torch.tensor([[1, 0, 2], [3, 3, 0]]))
    acc.all_reduce(None)
    with pytest.raises(RuntimeError, match="twice"):
        acc.all_reduce(None)
    with pytest.raises(RuntimeError, match="after all_reduce"):
        acc.update(s)
    acc.reset()
    acc.update(s)
    assert acc.compute()["num_tokens"] == 6


def test_bool_mask_and_unscored_tokens():
    x, y = peaked_logits(50, 40, seed=1)
    s = mh.token_stats(x, y)
    m = torch.zeros(50, dtype=torch.bool)
    m[::3] = True
    acc = mh.HESNRAccumulator()
    acc.update(s, m)
    assert acc.compute()["num_tokens"] == int(m.sum())
    assert list(acc.compute()["by_category"]) == ["action"]


@pytest.mark.parametrize("kw, field", [({"k": 1}, "k"), ({"threshold": 9.0}, "threshold"), ({"num_bins": 0}, "num_bins"),
                                       ({"category_names": ("a", "all")}, "category_names")])
def test_config_errors_name_their_field_and_the_flag(kw, field):
    """The metric settings are checked once (here); the evaluation config names the flag behind the field."""
    from megatron_hesnr.metric.accumulator import AccumulatorConfig, AccumulatorConfigError
    from megatron_hesnr.evaluation.config import HESNRConfig, HESNRConfigError, flag_of

    with pytest.raises(AccumulatorConfigError) as acc_err:
        AccumulatorConfig(**kw)
    assert acc_err.value.field == field and str(acc_err.value) == f"{field} {acc_err.value.message}"
    with pytest.raises(HESNRConfigError) as cfg_err:
        HESNRConfig(metric=kw)
    assert (cfg_err.value.flag, cfg_err.value.field, cfg_err.value.message) == (
        flag_of(f"metric.{field}"), f"metric.{field}", acc_err.value.message)
