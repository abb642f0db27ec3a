"""Trajectory-clustered uncertainty of the ratio metrics.

Every HE-SNR metric is a ratio of two sums over tokens, ``R = sum y / sum x``
(possibly through ``exp``).  Tokens of one trajectory are correlated, so both the
standard error and the comparison resample *trajectories*, never tokens; their
input is the per-trajectory table (:mod:`megatron_hesnr.trajectory_sums`).

* :func:`ratio_stderr` -- the standard error of one checkpoint's value: the
  ratio-estimator (Taylor) linearisation over trajectories ``i = 1..n``,
  ``SE(R)^2 = n / (n - 1) * sum_i (y_i - R x_i)^2 / (sum_i x_i)^2``, and
  ``SE(exp R) = exp(R) SE(R)`` (delta method) for HE-PPL and PPL.  Closed form,
  O(n), used by ``HESNRAccumulator.compute()``.
* :func:`paired_bootstrap` -- two checkpoints on the same trajectories: the same
  bootstrap resample of trajectories is applied to both, so the trajectory-level
  difficulty they share cancels in ``b - a``.  95% percentile interval of the
  resampled differences and a two-sided p-value from the resampled differences
  centred on the observed one, ``p = (1 + #{|d* - d| >= |d|}) / (B + 1)``.
  Seeded: the same inputs and seed give the same numbers.
"""
from __future__ import annotations

import math

import numpy as np

#: metric -> (numerator field, denominator field, exponentiated?)
RATIO_METRICS = {
    "hesnr": ("sum_p_over_h", "num_high_entropy", False),
    "hesnr_topk": ("sum_q_over_h", "num_high_entropy", False),
    "he_ppl": ("sum_nll_he", "num_high_entropy", True),
    "ppl": ("sum_nll", "num_tokens", True),
    "top1_acc": ("num_top1", "num_tokens", False),
    "high_entropy_fraction": ("num_high_entropy", "num_tokens", False),
}
STDERR_SUFFIX = "_stderr"
#: Resamples of the paired bootstrap unless told otherwise.
DEFAULT_BOOTSTRAP = 2000
#: Level of the intervals and of "significant".
ALPHA = 0.05


def _exp(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(np.minimum(x, 709.0)) if np.ndim(x) else (math.exp(x) if x < 709.0 else float("inf"))


def ratio_stderr(y, x, axis: int = -1):
    """Linearised standard error of ``sum y / sum x`` over trajectories along ``axis``.

    Vectorised over the other axes (e.g. ``[simulations, trajectories]``).  NaN where
    fewer than 2 trajectories are given or ``sum x == 0``.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n = y.shape[axis]
    sx = x.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = y.sum(axis=axis, keepdims=True) / sx
        e = y - r * x
        var = (e * e).sum(axis=axis) / np.squeeze(sx, axis) ** 2 * (n / (n - 1) if n > 1 else np.nan)
        se = np.sqrt(var)
    return np.where(np.squeeze(sx, axis) > 0, se, np.nan)


def metric_value(num, den, exponentiated: bool):
    """``num / den`` (then exp); NaN where ``den == 0``.  Arrays or floats."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return _exp(r) if exponentiated else r


def stderr_metrics(rows: np.ndarray, fields) -> dict:
    """``{"<metric>_stderr": ...}`` from per-trajectory sums ``rows [n, len(fields)]``
    (only the trajectories that have scored tokens)."""
    f = {name: i for i, name in enumerate(fields)}
    out = {}
    for metric, (num, den, is_exp) in RATIO_METRICS.items():
        y, x = rows[:, f[num]], rows[:, f[den]]
        se = float(ratio_stderr(y, x)) if len(rows) else float("nan")
        if is_exp and math.isfinite(se):
            se = float(metric_value(y.sum(), x.sum(), True)) * se
        out[metric + STDERR_SUFFIX] = se
    return out


def _resample_sums(z: np.ndarray, n_boot: int, rng: np.random.Generator, max_cells: int = 1 << 22):
    """``[n_boot, z.shape[1]]``: column sums of ``z`` over trajectories drawn with replacement.

    Each resample is a count vector over the ``n`` trajectories (bincount of ``n``
    uniform draws), applied by one matrix product; chunked to ``max_cells`` counts.
    """
    n = z.shape[0]
    chunk = max(1, min(n_boot, max_cells // max(1, n)))
    out = np.empty((n_boot, z.shape[1]), dtype=np.float64)
    for lo in range(0, n_boot, chunk):
        m = min(chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(m, n)) + (np.arange(m) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
        out[lo:lo + m] = counts @ z
    return out


def paired_bootstrap(rows_a: np.ndarray, rows_b: np.ndarray, fields, *, n_boot: int = DEFAULT_BOOTSTRAP,
                     seed: int = 0, metrics=None) -> dict:
    """Paired comparison of two checkpoints over the same ``n`` trajectories.

    ``rows_a``, ``rows_b``: ``[n, len(fields)]`` per-trajectory sums, row ``i`` the
    same trajectory in both.  Returns ``{metric: {"a", "b", "diff", "ci": [lo, hi],
    "p"}}`` with ``diff = b - a``; NaN entries where a metric is undefined.
    """
    rows_a = np.asarray(rows_a, dtype=np.float64)
    rows_b = np.asarray(rows_b, dtype=np.float64)
    if rows_a.shape != rows_b.shape or rows_a.ndim != 2 or rows_a.shape[1] != len(fields):
        raise ValueError(f"paired rows must both be [n, {len(fields)}], got {rows_a.shape} and {rows_b.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    f = {name: i for i, name in enumerate(fields)}
    nf = len(fields)
    rng = np.random.default_rng(seed)
    boot = _resample_sums(np.concatenate([rows_a, rows_b], axis=1), n_boot, rng) if len(rows_a) else None
    full_a, full_b = rows_a.sum(axis=0), rows_b.sum(axis=0)
    out = {}
    for metric in metrics or RATIO_METRICS:
        num, den, is_exp = RATIO_METRICS[metric]
        a = float(metric_value(full_a[f[num]], full_a[f[den]], is_exp))
        b = float(metric_value(full_b[f[num]], full_b[f[den]], is_exp))
        d = b - a
        entry = {"a": a, "b": b, "diff": d, "ci": [float("nan"), float("nan")], "p": float("nan"),
                 "n_trajectories": int(len(rows_a)), "n_boot": 0}
        if boot is not None and math.isfinite(d):
            da = metric_value(boot[:, f[num]], boot[:, f[den]], is_exp)
            db = metric_value(boot[:, nf + f[num]], boot[:, nf + f[den]], is_exp)
            ds = db - da
            ds = ds[np.isfinite(ds)]
            if len(ds):
                lo, hi = np.quantile(ds, [ALPHA / 2, 1 - ALPHA / 2])
                # Centred on the observed difference: the null distribution of d.
                extreme = int((np.abs(ds - d) >= abs(d)).sum())
                entry.update(ci=[float(lo), float(hi)], p=(1 + extreme) / (len(ds) + 1), n_boot=int(len(ds)))
        out[metric] = entry
    return out
