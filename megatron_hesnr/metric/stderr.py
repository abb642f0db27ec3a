"""Trajectory-clustered uncertainty of the ratio metrics.

Every HE-SNR metric is a ratio of two sums over tokens, ``R = sum y / sum x``
(possibly through ``exp``).  Tokens of one trajectory are correlated, so both the
standard error and the comparison resample *trajectories*, never tokens; their
input is the per-trajectory table (:mod:`megatron_hesnr.metric.trajectory_sums`).

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
  Seeded: the same inputs and seed give the same numbers.  Every distinct column
  is resampled once: a column of b equal to a's is *the same* resampled column,
  so identical inputs give exactly no difference whatever the BLAS kernel.  Used
  by ``hesnr compare``.
* :func:`paired_difference` -- the same question in closed form, O(n): the
  linearised standard error of ``R_b - R_a`` over the shared trajectories and a
  normal two-sided p.  Used by the report's "differs from previous" column.
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
    z = np.ascontiguousarray(z, dtype=np.float64)
    chunk = max(1, min(n_boot, max_cells // max(1, n)))
    out = np.empty((n_boot, z.shape[1]), dtype=np.float64)
    offsets = np.arange(chunk, dtype=np.int64)[:, None] * n
    for lo in range(0, n_boot, chunk):
        m = min(chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(m, n))
        idx += offsets[:m]
        counts = np.bincount(idx.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
        out[lo:lo + m] = counts @ z
    return out


def _distinct_columns(rows_a: np.ndarray, rows_b: np.ndarray, cols) -> tuple[np.ndarray, dict, dict]:
    """The columns ``cols`` of a and b, each distinct column once: ``(z, where_a, where_b)``
    with ``where_x[col]`` the column of ``z`` holding ``rows_x[:, col]``.  A column of b
    equal to a's maps to a's, so both read the very same resampled sums."""
    picked, where_a, where_b = [], {}, {}
    for c in cols:
        where_a[c] = len(picked)
        picked.append(rows_a[:, c])
    for c in cols:
        if np.array_equal(rows_b[:, c], rows_a[:, c]):
            where_b[c] = where_a[c]
        else:
            where_b[c] = len(picked)
            picked.append(rows_b[:, c])
    z = np.stack(picked, axis=1) if picked else np.zeros((len(rows_a), 0))
    return np.ascontiguousarray(z), where_a, where_b


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
    metrics = list(metrics or RATIO_METRICS)
    cols = sorted({f[RATIO_METRICS[m][j]] for m in metrics for j in (0, 1)})
    rng = np.random.default_rng(seed)
    z, where_a, where_b = _distinct_columns(rows_a, rows_b, cols)
    boot = _resample_sums(z, n_boot, rng) if len(rows_a) else None
    full = z.sum(axis=0)  # one contiguous column each: equal columns, equal sums
    out = {}
    for metric in metrics:
        num, den, is_exp = RATIO_METRICS[metric]
        a = float(metric_value(full[where_a[f[num]]], full[where_a[f[den]]], is_exp))
        b = float(metric_value(full[where_b[f[num]]], full[where_b[f[den]]], is_exp))
        d = b - a
        entry = {"a": a, "b": b, "diff": d, "ci": [float("nan"), float("nan")], "p": float("nan"),
                 "n_trajectories": int(len(rows_a)), "n_boot": 0}
        if boot is not None and math.isfinite(d):
            da = metric_value(boot[:, where_a[f[num]]], boot[:, where_a[f[den]]], is_exp)
            db = metric_value(boot[:, where_b[f[num]]], boot[:, where_b[f[den]]], is_exp)
            ds = db - da
            ds = ds[np.isfinite(ds)]
            if len(ds):
                lo, hi = np.quantile(ds, [ALPHA / 2, 1 - ALPHA / 2])
                # Centred on the observed difference: the null distribution of d.
                extreme = int((np.abs(ds - d) >= abs(d)).sum())
                entry.update(ci=[float(lo), float(hi)], p=(1 + extreme) / (len(ds) + 1), n_boot=int(len(ds)))
        out[metric] = entry
    return out


def paired_difference(rows_a: np.ndarray, rows_b: np.ndarray, fields, metric: str = "hesnr") -> dict:
    """Linearised paired comparison of one metric over the same ``n`` trajectories, O(n).

    ``d = R_b - R_a``; each trajectory's influence is
    ``(y_bi - R_b x_bi) / X_b - (y_ai - R_a x_ai) / X_a`` (times ``exp(R)`` for the
    exponentiated metrics) and ``SE(d)^2 = n / (n - 1) * sum_i influence_i^2``.
    Returns ``{"a", "b", "diff", "se", "ci": [d - 1.96 SE, d + 1.96 SE], "p"}`` with a
    two-sided normal p; identical rows give ``diff == 0`` and ``p == 1`` exactly.
    """
    rows_a = np.asarray(rows_a, dtype=np.float64)
    rows_b = np.asarray(rows_b, dtype=np.float64)
    if rows_a.shape != rows_b.shape or rows_a.ndim != 2 or rows_a.shape[1] != len(fields):
        raise ValueError(f"paired rows must both be [n, {len(fields)}], got {rows_a.shape} and {rows_b.shape}")
    f = {name: i for i, name in enumerate(fields)}
    num, den, is_exp = RATIO_METRICS[metric]
    n = len(rows_a)
    nan = float("nan")

    def side(rows):
        # Contiguous copies: the same numbers give the same sums whatever the layout.
        y, x = np.ascontiguousarray(rows[:, f[num]]), np.ascontiguousarray(rows[:, f[den]])
        sx = float(x.sum())
        r = float(y.sum()) / sx if sx > 0 else nan
        value = float(metric_value(y.sum(), sx, is_exp))
        with np.errstate(invalid="ignore", divide="ignore"):
            infl = (y - r * x) / sx
        return value, (value if is_exp else 1.0) * infl

    a, ia = side(rows_a)
    b, ib = side(rows_b)
    d = b - a
    out = {"a": a, "b": b, "diff": d, "se": nan, "ci": [nan, nan], "p": nan, "n_trajectories": n}
    if not math.isfinite(d) or n < 2:
        return out
    e = ib - ia
    se = math.sqrt(float(np.dot(e, e)) * n / (n - 1))
    if d == 0.0:
        p = 1.0
    elif se == 0.0:
        p = 0.0
    else:
        p = math.erfc(abs(d) / se / math.sqrt(2.0))
    z = 1.959963984540054
    out.update(se=se, ci=[d - z * se, d + z * se], p=p)
    return out
