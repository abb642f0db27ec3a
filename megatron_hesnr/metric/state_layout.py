"""The accumulator's layout and settings, without torch.

The field names of the state (``SCALAR_FIELDS``, ``BIN_FIELDS``), its version,
:class:`AccumulatorConfig`, the ratios from sums (:func:`metrics_from_sums`) and the
threshold sweep over a histogram (:func:`sweep_histogram`).  The accumulator
(:mod:`megatron_hesnr.metric.accumulator`, torch) and the record reader of ``hesnr report``
/ ``hesnr compare`` (numpy only) both use them: one definition for both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .defaults import DEFAULT_CATEGORY_NAMES, DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD


def check_num_documents(num_documents) -> None:
    if num_documents is None:
        return
    if isinstance(num_documents, bool) or int(num_documents) != num_documents or num_documents < 1:
        raise ValueError(f"num_documents must be a positive integer (the trajectories of the set) or None, "
                         f"got {num_documents!r}")


STATE_VERSION = 1

# Scalar fields per category (columns of the state, before the histogram).
SCALAR_FIELDS = (
    "num_tokens",        # scored and valid (|M|)
    "num_invalid",       # scored but invalid (non-finite logits, unscorable label)
    "sum_nll",           # over M
    "sum_entropy",       # H_k over M
    "num_top1",          # over M
    "num_in_topk",       # over M
    "num_high_entropy",  # |HE| at the configured threshold
    "sum_p_over_h",      # over HE: p(y) / H_k
    "sum_q_over_h",      # over HE: q_y / H_k (renormalised top-k probability)
    "sum_nll_he",        # over HE
)
# Per-bin fields of the H_k histogram.
BIN_FIELDS = (
    "count",         # every token of M
    "count_in_topk",  # tokens of M whose target is in the top k
    "sum_p_over_h",  # in_topk tokens (0 where H_k == 0)
    "sum_q_over_h",  # in_topk tokens (0 where H_k == 0)
    "sum_nll",       # in_topk tokens
)
_F = {name: i for i, name in enumerate(SCALAR_FIELDS)}
_B = {name: i for i, name in enumerate(BIN_FIELDS)}


class AccumulatorConfigError(ValueError):
    """A wrong metric setting: ``field`` (``k``, ``threshold``, ...) and ``message``."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field} {message}")


@dataclass(kw_only=True)
class AccumulatorConfig:
    """What an accumulator measures; two states merge only under equal configs."""

    k: int = DEFAULT_K
    """Size of the top-k candidate set (must match ``token_stats(k=...)``)."""
    threshold: float = DEFAULT_THRESHOLD
    """High-entropy threshold: a token is in HE when H_k > threshold (strict)."""
    num_bins: int = DEFAULT_NUM_BINS
    """Equal-width histogram bins of H_k over [0, ln k]."""
    category_names: tuple[str, ...] = field(default=DEFAULT_CATEGORY_NAMES)
    """Names of mask categories 1, 2, ...; their number fixes the state's rows."""
    num_documents: int | None = None
    """Trajectories of the evaluation set, when per-trajectory sums are kept (for the
    standard errors and ``hesnr compare``); ``update`` then needs ``doc_ids``."""

    def __post_init__(self):
        self.category_names = tuple(self.category_names)
        check_num_documents(self.num_documents)
        if int(self.k) != self.k or self.k < 2:
            raise AccumulatorConfigError("k", f"must be an integer >= 2 (the entropy of 1 value is 0), got {self.k}")
        if not (0.0 < self.threshold < math.log(self.k)):
            raise AccumulatorConfigError(
                "threshold", f"must lie in (0, ln k = {math.log(self.k):.6f}) for k={self.k}, got {self.threshold}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 1:
            raise AccumulatorConfigError("num_bins", f"must be a positive integer, got {self.num_bins}")
        if (not self.category_names or len(set(self.category_names)) != len(self.category_names)
                or "all" in self.category_names):
            raise AccumulatorConfigError(
                "category_names", f"must be distinct names other than 'all' (the overall result), "
                                  f"got {list(self.category_names)}")

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    def bin_edges(self, device=None):
        """The ``num_bins + 1`` edges as a float64 ``torch.Tensor``."""
        import torch

        w = math.log(self.k) / self.num_bins
        return torch.arange(self.num_bins + 1, dtype=torch.float64, device=device) * w

    def bin_edges_np(self) -> np.ndarray:
        """The same edges as a float64 numpy array (bit-identical to :meth:`bin_edges`)."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * (math.log(self.k) / self.num_bins)


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


def sweep_histogram(hist: np.ndarray, edges: np.ndarray, exact: dict, config: "AccumulatorConfig",
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
