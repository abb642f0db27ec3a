"""Trajectory-clustered standard errors and the paired bootstrap: are they honest?

* the linearised stderr of ``compute()`` agrees with a brute-force bootstrap that
  resamples trajectories and recomputes each metric from the tokens;
* over repeated draws of trajectories from a known population, the 95% intervals
  cover the true value 93-97% of the time;
* the paired p-value is uniform when two checkpoints do not differ, and small when
  they do.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

import megatron_hesnr as mh
from megatron_hesnr.metric.accumulator import SCALAR_FIELDS
from megatron_hesnr.metric.stderr import RATIO_METRICS, paired_bootstrap, ratio_stderr

from stderr_synth import as_token_stats, clustered_tokens, token_ratio_terms

N_DOCS = 300


def _tracked(tok, n_docs):
    acc = mh.HESNRAccumulator(num_documents=n_docs)
    acc.update(as_token_stats(tok), torch.ones(len(tok["doc"]), dtype=torch.long), torch.tensor(tok["doc"]))
    return acc


def _brute_bootstrap_se(tok, n_docs, threshold, n_boot=2000, seed=1):
    """Resample trajectories with replacement; recompute every metric from its tokens
    (each token weighted by how often its trajectory was drawn)."""
    terms = token_ratio_terms(tok, threshold)
    rng = np.random.default_rng(seed)
    values = {m: [] for m in terms}
    for lo in range(0, n_boot, 100):
        counts = np.stack([np.bincount(rng.integers(0, n_docs, n_docs), minlength=n_docs) for _ in range(100)])
        w = counts[:, tok["doc"]].astype(np.float64)          # [100, tokens]
        for m, (y, x) in terms.items():
            r = (w @ y) / (w @ x)
            values[m].append(np.exp(r) if RATIO_METRICS[m][2] else r)
    return {m: float(np.std(np.concatenate(v), ddof=1)) for m, v in values.items()}


def test_stderr_matches_brute_force_trajectory_bootstrap():
    tok = clustered_tokens(N_DOCS, seed=0)
    acc = _tracked(tok, N_DOCS)
    got = acc.compute()
    assert got["num_documents"] == N_DOCS
    assert got["by_category"]["action"]["num_documents"] == N_DOCS
    want = _brute_bootstrap_se(tok, N_DOCS, acc.config.threshold)
    naive_hesnr = None
    for m in RATIO_METRICS:
        se = got[f"{m}_stderr"]
        print(f"{m:<22} linearised {se:.5g}  bootstrap {want[m]:.5g}  ratio {se / want[m]:.3f}")
        assert se == pytest.approx(want[m], rel=0.10), m
        assert got["by_category"]["action"][f"{m}_stderr"] == se
    # Why trajectories: the per-token stderr of HE-SNR is far too small here.
    terms = token_ratio_terms(tok, acc.config.threshold)["hesnr"]
    he = terms[1] > 0
    naive_hesnr = terms[0][he].std(ddof=1) / math.sqrt(he.sum())
    print(f"per-token stderr of hesnr {naive_hesnr:.5g} vs trajectory {got['hesnr_stderr']:.5g}")
    assert naive_hesnr < 0.6 * got["hesnr_stderr"]


# ----------------------------------------------------------------- coverage
def _population_draws(n_sims, n_docs, rng):
    """Per-trajectory sums (y, x) of an HE-SNR-like ratio: x ~ Binomial(L, pi(u)) HE tokens,
    y = their p/H sum, with mean mu(u) per token; L log-normal, u ~ N(0, 1)."""
    L = np.maximum(2, rng.lognormal(np.log(120), 0.8, (n_sims, n_docs))).astype(np.int64)
    u = rng.normal(size=(n_sims, n_docs))
    x = rng.binomial(L, _pi(u)).astype(np.float64)
    y = x * _mu(u) + np.sqrt(x) * 0.25 * rng.normal(size=x.shape)
    return y, x


def _pi(u):
    return 1 / (1 + np.exp(-(-0.7 + 0.8 * u)))


def _mu(u):
    return 0.3 + 0.12 * np.tanh(u)


def _true_ratio():
    """E[L pi mu] / E[L pi] with L independent of u: Gauss-Hermite over u ~ N(0, 1)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    return float((weights * _pi(nodes) * _mu(nodes)).sum() / (weights * _pi(nodes)).sum())


def test_intervals_cover_the_true_value_95_percent():
    rng = np.random.default_rng(7)
    n_sims, n_docs = 3000, 300
    y, x = _population_draws(n_sims, n_docs, rng)
    truth = _true_ratio()
    est = y.sum(1) / x.sum(1)
    se = ratio_stderr(y, x)
    covered = np.abs(est - truth) <= 1.959964 * se
    # The delta-method interval of exp(R) (HE-PPL, PPL) covers exp(truth) exactly when
    # R's covers truth to first order; check it on its own scale too.
    exp_cover = np.abs(np.exp(est) - math.exp(truth)) <= 1.959964 * np.exp(est) * se
    print(f"coverage of 95% intervals over {n_sims} draws of {n_docs} trajectories: {covered.mean():.4f} "
          f"(exp scale {exp_cover.mean():.4f}); mean stderr {se.mean():.5f}, sd of estimates {est.std():.5f}")
    assert 0.93 <= covered.mean() <= 0.97
    assert 0.93 <= exp_cover.mean() <= 0.97
    assert se.mean() == pytest.approx(est.std(), rel=0.05)


# ------------------------------------------------------------ paired bootstrap
def _paired_sets(rng, n_docs, effect):
    """Two checkpoints on the same trajectories: shared difficulty u, same HE counts,
    independent token noise; checkpoint b's per-token mean is (1 + effect) times a's."""
    L = np.maximum(2, rng.lognormal(np.log(120), 0.8, n_docs)).astype(np.int64)
    u = rng.normal(size=n_docs)
    x = rng.binomial(L, _pi(u)).astype(np.float64)
    ya = x * _mu(u) + np.sqrt(x) * 0.25 * rng.normal(size=n_docs)
    yb = x * _mu(u) * (1 + effect) + np.sqrt(x) * 0.25 * rng.normal(size=n_docs)
    fields = list(SCALAR_FIELDS)
    rows_a, rows_b = np.zeros((n_docs, len(fields))), np.zeros((n_docs, len(fields)))
    for rows, yy in ((rows_a, ya), (rows_b, yb)):
        rows[:, fields.index("num_tokens")] = L
        rows[:, fields.index("num_high_entropy")] = x
        rows[:, fields.index("sum_p_over_h")] = yy
    return rows_a, rows_b, fields


def test_paired_p_value_is_uniform_under_the_null():
    rng = np.random.default_rng(11)
    ps = []
    for sim in range(300):
        a, b, fields = _paired_sets(rng, 200, effect=0.0)
        ps.append(paired_bootstrap(a, b, fields, n_boot=400, seed=sim, metrics=["hesnr"])["hesnr"]["p"])
    ps = np.asarray(ps)
    ks = sps.kstest(ps, "uniform")
    print(f"null: {len(ps)} paired p-values, KS p = {ks.pvalue:.3f}, rejected at 0.05: {(ps < 0.05).mean():.3f}")
    assert ks.pvalue > 0.01
    assert 0.02 <= (ps < 0.05).mean() <= 0.09


def test_paired_bootstrap_detects_a_planted_difference():
    rng = np.random.default_rng(12)
    res = []
    for sim in range(100):
        a, b, fields = _paired_sets(rng, 200, effect=0.04)   # 4% better HE-SNR
        res.append(paired_bootstrap(a, b, fields, n_boot=400, seed=sim, metrics=["hesnr"])["hesnr"])
    power = np.mean([r["p"] < 0.05 for r in res])
    positive = np.mean([r["ci"][0] > 0 for r in res])
    print(f"planted +4% HE-SNR over 200 trajectories: detected (p < 0.05) in {power:.2f}, CI above 0 in {positive:.2f}")
    assert power >= 0.9
    assert all(r["diff"] > 0 for r in res[:10])
    # A change like it without pairing is much harder to see: its stderr is larger.
    a, b, _ = _paired_sets(np.random.default_rng(3), 200, effect=0.04)
    r = paired_bootstrap(a, b, fields, n_boot=400, seed=0, metrics=["hesnr"])["hesnr"]
    unpaired_se = math.hypot(ratio_stderr(a[:, 7], a[:, 6]), ratio_stderr(b[:, 7], b[:, 6]))
    paired_se = (r["ci"][1] - r["ci"][0]) / (2 * 1.96)
    print(f"stderr of the difference: paired {paired_se:.5f}, unpaired {unpaired_se:.5f}")
    assert paired_se < 0.5 * unpaired_se


def test_paired_bootstrap_is_seeded_and_identical_checkpoints_do_not_differ():
    a, b, fields = _paired_sets(np.random.default_rng(5), 50, effect=0.02)
    one = paired_bootstrap(a, b, fields, n_boot=300, seed=4)
    assert one == paired_bootstrap(a, b, fields, n_boot=300, seed=4)
    assert one != paired_bootstrap(a, b, fields, n_boot=300, seed=5)
    same = paired_bootstrap(a, a, fields, n_boot=300, seed=4)["hesnr"]
    assert same["diff"] == 0.0 and same["p"] == 1.0 and same["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="paired rows"):
        paired_bootstrap(a, b[:-1], fields)
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(a, b, fields, n_boot=0)


def test_stderr_helpers_edge_cases():
    assert math.isnan(float(ratio_stderr([1.0], [2.0])))             # one trajectory
    assert math.isnan(float(ratio_stderr([0.0, 0.0], [0.0, 0.0])))   # empty denominator
    # Vectorised over leading axes: each row its own estimate.
    y, x = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]), np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(ratio_stderr(y, x), [1 / math.sqrt(3), 0.0])
