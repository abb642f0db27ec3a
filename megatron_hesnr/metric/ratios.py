"""The metrics from the sums, without torch.

:func:`metrics_from_sums` forms HE-SNR, HE-PPL, PPL and the other ratios from one row of
the state's sums; :func:`sweep_histogram` answers HE-SNR for other thresholds from the
H_k histogram.  The accumulator (torch) and the record reader of ``hesnr report`` /
``hesnr compare`` (numpy) both call them.
"""
from __future__ import annotations

import math

import numpy as np

from .state_layout import BIN_FIELDS, AccumulatorConfig
from .state_layout import BIN_INDEX as _B


def _exp(x: float) -> float:
    """exp without OverflowError (a huge mean NLL gives inf, NaN stays NaN)."""
    return math.exp(x) if x < 709.0 else (x if math.isnan(x) else float("inf"))


def metrics_from_sums(s: dict) -> dict:
    """Ratios from sums; NaN (never an exception) where a denominator is 0."""

    def ratio(a, b):
        return a / b if b > 0 else float("nan")

    n, n_he = s["num_tokens"], s["num_high_entropy"]
    return {
        "hesnr": ratio(s["sum_p_over_h"], n_he),
        "hesnr_topk": ratio(s["sum_q_over_h"], n_he),
        "he_ppl": _exp(ratio(s["sum_nll_he"], n_he)),
        "ppl": _exp(ratio(s["sum_nll"], n)),
        "num_tokens": int(n),
        "num_high_entropy": int(n_he),
        "high_entropy_fraction": ratio(n_he, n),
        "top1_acc": ratio(s["num_top1"], n),
        "topk_acc": ratio(s["num_in_topk"], n),
        "mean_entropy": ratio(s["sum_entropy"], n),
        "num_invalid": int(s["num_invalid"]),
    }


def sweep_histogram(hist: np.ndarray, edges: np.ndarray, exact: dict, config: AccumulatorConfig,
                    thresholds) -> list[dict]:
    """HE-SNR for many thresholds from one category's histogram ``[num_bins, len(BIN_FIELDS)]``.

    For a threshold ``eps`` the bins whose lower edge is >= eps are summed, so the
    result is exact when ``eps`` is a bin edge (the edge used is returned as ``edge``);
    between edges, tokens with eps < H_k <= edge are left out.  The configured
    threshold itself is answered from its exact sums ``exact`` (:meth:`sums`).
    """
    hist = np.asarray(hist, dtype=np.float64)
    # Suffix sums: tail[j] = sum over bins >= j.
    tail = np.cumsum(hist[::-1], axis=0)[::-1]
    out = []
    for eps in thresholds:
        eps = float(eps)
        if not 0.0 < eps < math.log(config.k):
            raise ValueError(f"sweep threshold {eps} outside (0, ln k)")
        if eps == config.threshold:
            s = {"num_high_entropy": exact["num_high_entropy"], "sum_p_over_h": exact["sum_p_over_h"],
                 "sum_q_over_h": exact["sum_q_over_h"], "sum_nll_he": exact["sum_nll_he"]}
            edge = eps
        else:
            j = max(int(np.searchsorted(edges, eps, side="left")), 1)
            edge = float(edges[j])
            row = tail[j] if j < len(tail) else np.zeros(len(BIN_FIELDS), dtype=np.float64)
            s = {"num_high_entropy": float(row[_B["count_in_topk"]]),
                 "sum_p_over_h": float(row[_B["sum_p_over_h"]]),
                 "sum_q_over_h": float(row[_B["sum_q_over_h"]]),
                 "sum_nll_he": float(row[_B["sum_nll"]])}
        n_he = s["num_high_entropy"]
        out.append({
            "threshold": eps,
            "edge": edge,
            "hesnr": s["sum_p_over_h"] / n_he if n_he > 0 else float("nan"),
            "hesnr_topk": s["sum_q_over_h"] / n_he if n_he > 0 else float("nan"),
            "he_ppl": _exp(s["sum_nll_he"] / n_he) if n_he > 0 else float("nan"),
            "num_high_entropy": int(n_he),
        })
    return out
