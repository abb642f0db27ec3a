"""Correlation of a metric with a downstream score, with p-values and bootstrap CIs.

Point estimates and p-values are ``scipy.stats.pearsonr`` / ``spearmanr`` /
``kendalltau`` (tau-b) on the points as given.  Confidence intervals are the
percentile bootstrap: ``n_boot`` resamples of the (metric, score) pairs with
replacement, the statistic recomputed on each (vectorised here; the same
definitions as scipy's, see :func:`_pearson_rows`, :func:`_kendall_b_rows`),
resamples where it is undefined (a constant column) left out and counted.

Sign convention: the correlations are of the metric's raw value with the score.
Every metric has a *direction* (+1: higher is better, e.g. HE-SNR, top-1 accuracy;
-1: lower is better, e.g. PPL, HE-PPL; 0: none assumed); ``direction * r`` is the
*agreement*: positive when the metric orders checkpoints the way the score does.
"""
from __future__ import annotations

import math

import numpy as np

MIN_POINTS = 3
METHODS = ("pearson", "spearman", "kendall")


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair ``[B, n]``; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / den
    r[~(den > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _kendall_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair ``[B, n]`` (scipy's default variant).

    tau_b = S / sqrt(P_x P_y), S = sum over pairs i<j of sign(dx) sign(dy), P_x the
    number of pairs not tied in x.  Summing over all ordered pairs doubles S, P_x and
    P_y alike, so the ratio is unchanged.
    """
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    s = (sx * sy).sum(axis=(1, 2))
    den = np.sqrt(np.abs(sx).sum(axis=(1, 2)) * np.abs(sy).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = s / den
    t[~(den > 0)] = np.nan
    return t


def bootstrap_rows(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The three statistics for each row of ``[B, n]`` resampled pairs."""
    from scipy import stats  # imported when a correlation is computed (seconds at start-up otherwise)

    # Kendall builds [rows, n, n] sign tables: bound them to ~4M entries at a time.
    step = max(1, 4_000_000 // max(1, x.shape[1] ** 2))
    return {
        "pearson": _pearson_rows(x, y),
        "spearman": _pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)),
        "kendall": np.concatenate([
            _kendall_b_rows(x[i:i + step], y[i:i + step]) for i in range(0, x.shape[0], step)
        ]) if x.shape[0] else np.empty(0),
    }


def _point(method: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")  # undefined; scipy would warn and return NaN
    if method == "pearson":
        res = stats.pearsonr(x, y)
    elif method == "spearman":
        res = stats.spearmanr(x, y)
    else:
        res = stats.kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)


def correlate(x, y, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
              direction: int = 0) -> dict:
    """Pearson, Spearman and Kendall of ``x`` (metric) with ``y`` (score).

    Pairs where either value is non-finite are excluded (their number is returned as
    ``excluded``).  With fewer than :data:`MIN_POINTS` pairs no correlation is
    computed: ``status`` says why and the statistics are ``None``.
    Returns ``{"n", "excluded", "status", "direction", "<method>": {"r", "p",
    "ci": [lo, hi], "boot_valid", "agreement"}}``.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"metric and score lengths differ: {x.shape[0]} vs {y.shape[0]}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.shape[0])
    out: dict = {"n": n, "excluded": int((~keep).sum()), "direction": direction,
                 "confidence": confidence, "n_boot": int(n_boot)}
    if n < MIN_POINTS:
        out["status"] = f"fewer than {MIN_POINTS} points ({n}): no correlation"
        out.update({m: None for m in METHODS})
        return out
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "metric" if np.ptp(x) == 0 else "score"
        out["status"] = f"the {which} is constant over the {n} points: correlation undefined"
        out.update({m: None for m in METHODS})
        return out
    out["status"] = "ok"
    boot = {m: np.empty(0) for m in METHODS}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(int(n_boot), n))
        boot = bootstrap_rows(x[idx], y[idx])
    alpha = (1.0 - confidence) / 2.0
    for m in METHODS:
        r, p = _point(m, x, y)
        b = boot[m][np.isfinite(boot[m])]
        ci = ([float(np.quantile(b, alpha)), float(np.quantile(b, 1.0 - alpha))]
              if b.size else [float("nan"), float("nan")])
        out[m] = {"r": r, "p": p, "ci": ci, "boot_valid": int(b.size),
                  "agreement": direction * r if direction else float("nan")}
    return out


def linear_fit(x, y) -> tuple[float, float] | None:
    """Least-squares line ``y = a x + b`` over the finite pairs; None if undefined."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2 or np.ptp(x[keep]) == 0:
        return None
    a, b = np.polyfit(x[keep], y[keep], 1)
    return float(a), float(b)


def fmt_r(entry: dict | None) -> str:
    """``r [lo, hi]`` for tables; '-' when not computed."""
    if not entry or entry.get("r") is None or math.isnan(entry["r"]):
        return "-"
    lo, hi = entry["ci"]
    if math.isnan(lo):
        return f"{entry['r']:+.3f}"
    return f"{entry['r']:+.3f} [{lo:+.2f}, {hi:+.2f}]"
