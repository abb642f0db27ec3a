"""Threshold sweep from stored histograms == HE-SNR recomputed from per-token data;
the adaptive (valley) threshold finds a known valley and falls back when there is none."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from report_synth import make_run, record_of, synth_stats, write_jsonl, write_scores
from scipy import stats

from megatron_hesnr import HESNRAccumulator, token_stats
from megatron_hesnr.analysis import analyse, read_records, read_scores
from megatron_hesnr.analysis.thresholds import ValleyRule, valley_threshold

LN = math.log


def _direct_hesnr(s, eps: float) -> float:
    """HE-SNR at threshold eps from per-token data (the metric's definition)."""
    he = s.valid & s.in_topk & (s.entropy > eps)
    if int(he.sum()) == 0:
        return float("nan")
    return float((s.logp[he].exp() / s.entropy[he]).mean())


def _logit_run(n_ckpt=4, tokens=600, vocab=64, seed=0):
    """Records whose stats come from token_stats on random logits (the real path)."""
    gen = torch.Generator().manual_seed(seed)
    recs, all_stats = [], []
    for i in range(n_ckpt):
        # Sharper logits for later checkpoints; a few near-ties make mid entropies.
        logits = torch.randn(tokens, vocab, generator=gen) * (1.0 + 0.4 * i)
        labels = torch.randint(0, vocab, (tokens,), generator=gen)
        s = token_stats(logits, labels, impl="torch")
        acc = HESNRAccumulator()
        acc.update(s)
        acc.all_reduce(None)
        recs.append(record_of(acc, 500 * (i + 1), run="logits"))
        all_stats.append(s)
    return recs, all_stats


@pytest.mark.parametrize("source", ["synthetic", "token_stats"])
def test_sweep_equals_recomputation_at_bin_edges(tmp_path, source):
    if source == "synthetic":
        recs, toks = make_run(np.linspace(0, 1, 5), n=2500, seed=2, keep_stats=True)
    else:
        recs, toks = _logit_run()
    scores = [0.1 * i + 0.05 * (i % 2) for i in range(len(recs))]
    write_jsonl(tmp_path / "r.jsonl", recs)
    write_scores(tmp_path / "s.csv", [(r["checkpoint"], s) for r, s in zip(recs, scores)])
    summary = analyse(read_records(tmp_path / "r.jsonl"), read_scores(tmp_path / "s.csv"), n_boot=20)
    sens = summary["threshold_sensitivity"]
    entries = sens["entries"]
    assert entries[0]["threshold"] >= LN(2) - 1e-12 and entries[-1]["threshold"] <= LN(5) + 1e-12
    assert sum(e["default"] for e in entries) == 1
    n_edge = 0
    for e in entries:
        on_edge = e["default"] or e["edges"] == [pytest.approx(e["threshold"], abs=1e-12)]
        if not on_edge:  # named thresholds between edges: rounded up to the next edge
            assert all(x >= e["threshold"] for x in e["edges"])
            eps = e["edges"][0]
        else:
            eps = e["threshold"]
            n_edge += 1
        direct = [_direct_hesnr(s, eps) for s in toks]
        np.testing.assert_allclose(e["values"], direct, rtol=1e-12, atol=0)
        if e["correlation"]["status"] == "ok":
            assert e["correlation"]["pearson"]["r"] == pytest.approx(stats.pearsonr(direct, scores).statistic, abs=1e-12)
    assert n_edge >= 10
    # Per-checkpoint adaptive HE-SNR is the metric at its own (edge) threshold.
    for row, s in zip(summary["checkpoints"], toks):
        a = row["adaptive"]
        assert row["metrics"]["hesnr_adaptive"] == pytest.approx(_direct_hesnr(s, a["threshold"]), rel=1e-12)


def _acc_from_entropies(h: torch.Tensor) -> HESNRAccumulator:
    gen = torch.Generator().manual_seed(1)
    s = synth_stats(h.numel(), 0.5, gen)
    s.entropy = h.double()
    s.valid = torch.ones_like(s.valid)
    s.logp, s.logq = s.logp.nan_to_num(-1.0), s.logq.nan_to_num(-0.5)
    acc = HESNRAccumulator()
    acc.update(s)
    return acc


@pytest.mark.parametrize("w3,w4", [(0.5, 0.5), (0.7, 0.3), (0.3, 0.7)])
def test_valley_found_where_the_mixture_density_is_lowest(w3, w4):
    gen = torch.Generator().manual_seed(4)
    n, sd = 40000, 0.05
    k3 = torch.rand(n, generator=gen) < w3 / (w3 + w4)
    h = torch.where(k3, LN(3), LN(4)) + sd * torch.randn(n, generator=gen, dtype=torch.float64)
    acc = _acc_from_entropies(h)
    res = valley_threshold(acc.histogram(), acc.config.threshold)
    assert res["status"] == "valley", res
    # True minimum of the mixture density (smoothing width added to the components).
    grid = np.linspace(LN(3), LN(4), 20001)
    s = math.hypot(sd, ValleyRule().sigma)
    pdf = w3 * stats.norm.pdf(grid, LN(3), s) + w4 * stats.norm.pdf(grid, LN(4), s)
    truth = grid[np.argmin(pdf)]
    assert abs(res["threshold"] - truth) < 0.02, (res["threshold"], truth)
    edges = acc.histogram()["edges"]
    assert res["threshold"] == edges[res["edge_index"]]  # an edge: the sweep is exact there
    assert res["depth"] > 0.5


def test_valley_falls_back_without_a_valley():
    gen = torch.Generator().manual_seed(5)
    fixed = HESNRAccumulator().config.threshold
    # Flat density: no valley (shallow or at the window's end).
    flat = _acc_from_entropies(torch.rand(50000, generator=gen, dtype=torch.float64) * LN(10))
    r = valley_threshold(flat.histogram(), fixed)
    assert r["status"] == "fallback" and r["threshold"] == fixed and r["reason"]
    # One mode at ln 3 only: the density keeps falling across the window.
    one = _acc_from_entropies(LN(3) + 0.05 * torch.randn(20000, generator=gen, dtype=torch.float64))
    r = valley_threshold(one.histogram(), fixed)
    assert r["status"] == "fallback" and "upper end" in r["reason"]
    # Too few tokens.
    few = _acc_from_entropies(torch.tensor([LN(3), LN(4)] * 20, dtype=torch.float64))
    r = valley_threshold(few.histogram(), fixed)
    assert r["status"] == "fallback" and "too few tokens" in r["reason"]
    # Empty histogram.
    r = valley_threshold(HESNRAccumulator().histogram(), fixed)
    assert r["status"] == "fallback"
