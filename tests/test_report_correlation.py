"""Correlations of the report equal scipy.stats computed directly on the metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
from report_synth import make_run, write_jsonl, write_scores
from scipy import stats

from megatron_hesnr import HESNRAccumulator
from megatron_hesnr.analysis import analyse, correlate, read_records, read_scores
from megatron_hesnr.analysis.correlation import bootstrap_rows
from megatron_hesnr.analysis.summary import METRICS

SCIPY = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}


def _direct_metrics(recs):
    """Metrics straight from each record's accumulator (not through the analysis)."""
    return [HESNRAccumulator.from_state_dict(r["state"]).compute() for r in recs]


RELATIONS = {
    # score as a function of the checkpoint's own HE-SNR (and its index for the noise)
    "monotone": lambda h, i, rng: math.exp(6 * h),
    "anti": lambda h, i, rng: 1.0 - h ** 3,
    "noisy": lambda h, i, rng: h + rng.normal(0, 0.02),
}


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_correlations_equal_scipy(tmp_path, relation):
    qualities = np.linspace(0.0, 1.0, 7)
    recs = make_run(qualities, n=2000, seed=11)
    direct = _direct_metrics(recs)
    rng = np.random.default_rng(5)
    scores = [RELATIONS[relation](m["hesnr"], i, rng) for i, m in enumerate(direct)]
    write_jsonl(tmp_path / "r.jsonl", recs)
    write_scores(tmp_path / "s.csv", [(r["checkpoint"], s) for r, s in zip(recs, scores)])
    summary = analyse(read_records([tmp_path / "r.jsonl"]), read_scores(tmp_path / "s.csv"),
                      n_boot=64, seed=1)
    corr = summary["correlations"]["all"]
    assert summary["n_scored"] == 7
    for key, _, direction in METRICS:
        x = [m[key] for m in direct]
        c = corr[key]
        assert c["status"] == "ok" and c["n"] == 7 and c["direction"] == direction
        for method, fn in SCIPY.items():
            ref = fn(x, scores)
            assert c[method]["r"] == pytest.approx(ref.statistic, abs=1e-12), (key, method)
            assert c[method]["p"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300), (key, method)
            lo, hi = c[method]["ci"]
            assert -1 <= lo <= hi <= 1
    # The known relation shows up where it must.
    hes = corr["hesnr"]
    if relation == "monotone":
        assert hes["spearman"]["r"] == pytest.approx(1.0) and hes["kendall"]["r"] == pytest.approx(1.0)
        assert hes["pearson"]["agreement"] > 0
    elif relation == "anti":
        assert hes["spearman"]["r"] == pytest.approx(-1.0) and hes["kendall"]["r"] == pytest.approx(-1.0)
        assert hes["pearson"]["agreement"] < 0
    else:
        assert hes["pearson"]["r"] > 0.5
    # Sign convention: PPL is better when lower, so its agreement is -r.
    assert corr["ppl"]["pearson"]["agreement"] == pytest.approx(-corr["ppl"]["pearson"]["r"])
    assert corr["hesnr"]["pearson"]["agreement"] == pytest.approx(corr["hesnr"]["pearson"]["r"])


def test_bootstrap_statistics_match_scipy_per_resample():
    """The vectorised bootstrap statistics are scipy's, ties (from resampling) included."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(40, 9)).astype(float)
    y = x + rng.integers(-2, 3, size=x.shape)
    got = bootstrap_rows(x, y)
    for method, fn in SCIPY.items():
        for b in range(x.shape[0]):
            if np.ptp(x[b]) == 0 or np.ptp(y[b]) == 0:
                assert math.isnan(got[method][b])
                continue
            assert got[method][b] == pytest.approx(fn(x[b], y[b]).statistic, abs=1e-12), (method, b)


def test_bootstrap_ci_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = 0.7 * x + rng.normal(scale=0.5, size=30)
    a = correlate(x, y, n_boot=300, seed=7)
    b = correlate(x, y, n_boot=300, seed=7)
    c = correlate(x, y, n_boot=300, seed=8)
    assert a["pearson"]["ci"] == b["pearson"]["ci"]
    assert a["pearson"]["ci"] != c["pearson"]["ci"]
    for m in SCIPY:
        lo, hi = a[m]["ci"]
        assert lo < a[m]["r"] < hi
        assert a[m]["boot_valid"] == 300


def test_correlate_excludes_nan_and_needs_three_points():
    x = [1.0, float("nan"), 2.0, 3.0, 4.5]
    y = [2.0, 5.0, 1.0, 7.0, float("inf")]
    c = correlate(x, y, n_boot=10)
    assert c["n"] == 3 and c["excluded"] == 2 and c["status"] == "ok"
    assert c["pearson"]["r"] == pytest.approx(stats.pearsonr([1, 2, 3], [2, 1, 7]).statistic)
    c2 = correlate([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0], n_boot=10)
    assert c2["n"] == 2 and c2["pearson"] is None and "fewer than 3" in c2["status"]
    c3 = correlate([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_boot=10)
    assert c3["pearson"] is None and "constant" in c3["status"]
