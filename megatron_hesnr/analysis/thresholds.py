"""Threshold sensitivity and an adaptive threshold, from the stored H_k histograms.

Nothing is recomputed from tokens: :meth:`HESNRAccumulator.sweep` sums the
right-closed histogram bins above a threshold, exact at bin edges (other thresholds
are rounded up to the next edge, reported as ``edge``; the configured threshold is
answered from its own exact sums).

Adaptive threshold ("valley" rule), per checkpoint, on the count histogram of H_k:

1. density ``d_i = count_i / (N * w)`` over the bins (``w`` the bin width), smoothed
   by a Gaussian of ``sigma`` nats (normalised convolution: ``(d * g) / (1 * g)``, so
   the ends of [0, ln k] are not pulled down);
2. the smoothed density at each interior edge ``e_j`` is the mean of its two bins;
   among the edges in ``[ln 3, ln 4]`` (between the "3 candidates" and "4
   candidates" modes) the one with the lowest density is the valley (ties: the one
   nearest the fixed threshold);
3. it is accepted when it lies strictly inside the window (a minimum on the window's
   end means the density falls or rises all the way across: no valley) and is at
   least ``min_depth`` (relative) below the lower of the two highest smoothed
   densities on either side within ``margin`` nats beyond the window, and the
   histogram holds at least ``min_tokens`` tokens.
Otherwise the fixed threshold is used and the reason is reported.  The accepted
threshold is a bin edge, so HE-SNR at it is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


LN = math.log


def named_thresholds(default: float) -> list[tuple[str, float]]:
    """The paper's sweep ln 2 .. ln 5 with the midpoints; the default is one of them."""
    return [
        ("ln 2", LN(2)),
        ("(ln 2 + ln 3)/2", (LN(2) + LN(3)) / 2),
        ("ln 3", LN(3)),
        ("(ln 3 + ln 4)/2", (LN(3) + LN(4)) / 2),
        ("ln 4", LN(4)),
        ("(ln 4 + ln 5)/2", (LN(4) + LN(5)) / 2),
        ("ln 5", LN(5)),
    ] if math.isclose(default, (LN(3) + LN(4)) / 2) else sorted(
        [("ln 2", LN(2)), ("ln 3", LN(3)), ("ln 4", LN(4)), ("ln 5", LN(5)), ("configured", default)],
        key=lambda t: t[1])


def sweep_grid(k: int, num_bins: int, default: float, points: int = 25) -> list[tuple[str, float]]:
    """Named thresholds plus about ``points`` bin edges spread over [ln 2, ln 5]
    (edges, so the sweep is exact there), sorted, all inside (0, ln k)."""
    w = math.log(k) / num_bins
    lo, hi = LN(2), LN(5)
    j0, j1 = math.ceil(lo / w - 1e-9), math.floor(hi / w + 1e-9)
    step = max(1, (j1 - j0) // max(1, points - 1))
    grid = [(f"edge {j}", j * w) for j in range(j0, j1 + 1, step)]
    named = named_thresholds(default)
    out = {round(v, 12): (name, v) for name, v in grid}
    out.update({round(v, 12): (name, v) for name, v in named})  # named labels win
    return [t for t in sorted(out.values(), key=lambda t: t[1]) if 0.0 < t[1] < math.log(k)]


@dataclass(kw_only=True)
class ValleyRule:
    lo: float = LN(3)
    """Window of candidate valleys: [lo, hi] nats."""
    hi: float = LN(4)
    sigma: float = 0.03
    """Gaussian smoothing width in nats."""
    margin: float = 0.1
    """How far beyond the window (nats) the flanking modes are looked for."""
    min_depth: float = 0.05
    """Minimum relative depth of the valley below the lower flanking mode."""
    min_tokens: int = 200

    def __post_init__(self):
        if not 0.0 < self.lo < self.hi:
            raise ValueError(f"valley window must satisfy 0 < lo < hi, got [{self.lo}, {self.hi}]")
        if self.sigma < 0 or self.margin < 0 or not 0 <= self.min_depth < 1 or self.min_tokens < 0:
            raise ValueError("sigma, margin >= 0, 0 <= min_depth < 1 and min_tokens >= 0 are required")


def smooth_density(counts: np.ndarray, width: float, sigma: float) -> np.ndarray:
    """Normalised Gaussian smoothing of the density ``counts / (N * width)``."""
    total = counts.sum()
    d = counts / (total * width) if total > 0 else np.zeros_like(counts)
    s_bins = sigma / width
    if s_bins <= 0:
        return d
    half = int(math.ceil(4 * s_bins))
    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / s_bins) ** 2)
    num = np.convolve(d, g, mode="same")
    den = np.convolve(np.ones_like(d), g, mode="same")
    if num.shape[0] != d.shape[0]:  # kernel longer than the histogram
        c = (num.shape[0] - d.shape[0]) // 2
        num, den = num[c:c + d.shape[0]], den[c:c + d.shape[0]]
    return num / den


def valley_threshold(hist: dict, fixed: float, rule: ValleyRule | None = None) -> dict:
    """Apply the valley rule to ``HESNRAccumulator.histogram()`` output.

    Returns ``{"threshold", "status": "valley" | "fallback", "reason", "depth",
    "edge_index"}``; on fallback ``threshold`` is ``fixed``.
    """
    rule = rule or ValleyRule()
    edges = np.asarray(hist["edges"], dtype=np.float64)
    counts = np.asarray(hist["count"], dtype=np.float64)
    width = float(edges[1] - edges[0])

    def fallback(reason, depth=float("nan")):
        return {"threshold": fixed, "status": "fallback", "reason": reason, "depth": depth, "edge_index": None}

    total = float(counts.sum())
    if total < max(1, rule.min_tokens):
        return fallback(f"too few tokens in the histogram ({int(total)} < {rule.min_tokens})")
    if rule.hi >= edges[-1]:
        return fallback(f"window [{rule.lo:.3f}, {rule.hi:.3f}] reaches ln k = {edges[-1]:.3f}")
    s = smooth_density(counts, width, rule.sigma)
    centers = (edges[:-1] + edges[1:]) / 2
    j = np.arange(1, len(edges) - 1)  # interior edges
    cand = j[(edges[j] >= rule.lo - 1e-12) & (edges[j] <= rule.hi + 1e-12)]
    if cand.size < 3:
        return fallback(f"fewer than 3 bin edges in [{rule.lo:.3f}, {rule.hi:.3f}]: bins too coarse")
    at_edge = (s[cand - 1] + s[cand]) / 2
    best = at_edge.min()
    ties = cand[np.isclose(at_edge, best, rtol=1e-12, atol=0.0)]
    jstar = int(ties[np.argmin(np.abs(edges[ties] - fixed))])
    if jstar in (cand[0], cand[-1]):
        side = "lower" if jstar == cand[0] else "upper"
        return fallback(f"no valley: the smoothed density is lowest at the {side} end of the window")
    left = s[(centers >= rule.lo - rule.margin) & (centers <= edges[jstar])]
    right = s[(centers >= edges[jstar]) & (centers <= rule.hi + rule.margin)]
    mode = min(left.max(), right.max())
    depth = float(1.0 - best / mode) if mode > 0 else 0.0
    if depth < rule.min_depth:
        return fallback(f"valley too shallow (depth {depth:.3f} < {rule.min_depth})", depth)
    return {"threshold": float(edges[jstar]), "status": "valley", "reason": "", "depth": depth,
            "edge_index": jstar}


def pooled_histogram(accs: list, category=None) -> dict | None:
    """Sum of the histograms (None when the accumulators' bins differ)."""
    if not accs:
        return None
    cfg0 = accs[0].config
    if any((a.config.k, a.config.num_bins) != (cfg0.k, cfg0.num_bins) for a in accs):
        return None
    hists = [a.histogram(category) for a in accs]
    out = {"edges": hists[0]["edges"]}
    for name in hists[0]:
        if name != "edges":
            out[name] = np.sum([h[name] for h in hists], axis=0).tolist()
    return out
