"""Clustered synthetic evaluation data for the standard-error tests.

Each trajectory has a latent difficulty ``u`` that shifts every one of its tokens:
the chance of a high-entropy token, p(y), top-1 and the NLL.  So tokens inside a
trajectory are correlated and a per-token standard error would be far too small.
Lengths are log-normal (a few dozen to a few thousand tokens), as in agent data.
"""
from __future__ import annotations

import numpy as np
import torch

from megatron_hesnr.metric.token_stats import TokenStats


def clustered_tokens(n_docs: int, seed: int, mean_len: float = 120.0, shift: float = 0.0):
    """Per-token arrays (numpy) and the trajectory index of every token.

    ``shift`` raises p(y) of every token (a "better checkpoint")."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(2, rng.lognormal(np.log(mean_len), 0.8, n_docs).astype(np.int64))
    u = rng.normal(0.0, 1.0, n_docs)
    doc = np.repeat(np.arange(n_docs), lengths)
    ut = u[doc]
    t = len(doc)
    he = rng.random(t) < 1 / (1 + np.exp(-(-0.7 + 0.8 * ut)))
    entropy = np.where(he, rng.uniform(1.3, np.log(10), t), rng.uniform(0.0, 1.2, t))
    logit_p = -0.5 + 0.9 * ut + rng.normal(0, 1.0, t) + shift
    p = 1 / (1 + np.exp(-logit_p))
    p = np.clip(p, 1e-6, 1 - 1e-6)
    in_topk = rng.random(t) < 0.9
    top1 = in_topk & (rng.random(t) < p)
    logq = np.log(np.minimum(1.0, p * 1.3))
    return {"doc": doc, "entropy": entropy, "logp": np.log(p), "logq": logq, "in_topk": in_topk,
            "top1": top1, "lengths": lengths}


def as_token_stats(tok: dict) -> TokenStats:
    n = len(tok["doc"])
    return TokenStats(
        entropy=torch.tensor(tok["entropy"], dtype=torch.float32),
        logp=torch.tensor(tok["logp"], dtype=torch.float32),
        logq=torch.tensor(tok["logq"], dtype=torch.float32),
        in_topk=torch.tensor(tok["in_topk"]),
        top1=torch.tensor(tok["top1"]),
        valid=torch.ones(n, dtype=torch.bool),
    )


def token_ratio_terms(tok: dict, threshold: float) -> dict:
    """Per-token (numerator, denominator) of each ratio metric, straight from the definition
    (independent of the accumulator): HE = in top-k and H_k > threshold."""
    e = tok["entropy"].astype(np.float32).astype(np.float64)
    lp = tok["logp"].astype(np.float32).astype(np.float64)
    lq = tok["logq"].astype(np.float32).astype(np.float64)
    he = tok["in_topk"] & (e > threshold)
    one = np.ones_like(e)
    return {
        "hesnr": (np.where(he, np.exp(lp) / e, 0.0), he * 1.0),
        "hesnr_topk": (np.where(he, np.exp(lq) / e, 0.0), he * 1.0),
        "he_ppl": (np.where(he, -lp, 0.0), he * 1.0),
        "ppl": (-lp, one),
        "top1_acc": (tok["top1"] * 1.0, one),
        "high_entropy_fraction": (he * 1.0, one),
    }
