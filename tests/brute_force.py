"""Float64 brute force of the HE-SNR definition, token by token (test oracle).

Deliberately naive: Python loops over tokens, full-vocabulary float64 math, no
chunking, no shard records; written straight from docs/metric.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch

EPS = (math.log(3) + math.log(4)) / 2


def _lse(x: np.ndarray) -> float:
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def brute_tokens(logits: torch.Tensor, labels: torch.Tensor, k: int = 10, vocab_size: int | None = None):
    """Per-token dicts (or None for invalid tokens), row-major over the leading dims."""
    z_all = logits.detach().to(torch.float64).reshape(-1, logits.shape[-1]).numpy()
    y_all = labels.reshape(-1).numpy()
    vs = logits.shape[-1] if vocab_size is None else vocab_size
    out = []
    for z, y in zip(z_all, y_all):
        z = z[:vs]
        if not np.isfinite(z).all() or y < 0 or y >= vs:
            out.append(None)
            continue
        lse = _lse(z)
        v = np.sort(z)[::-1][:k]
        lse_k = _lse(v)
        q = np.exp(v - lse_k)
        h = float(-(q[q > 0] * np.log(q[q > 0])).sum())
        out.append(dict(
            entropy=h, logp=float(z[y] - lse), logq=float(z[y] - lse_k),
            in_topk=bool(z[y] >= v[-1]), top1=bool(z[y] >= v[0]),
        ))
    return out


def brute_metrics(tokens, mask=None, threshold: float = EPS) -> dict:
    """Aggregates over the tokens whose mask is > 0 (all when mask is None)."""
    cats = [1] * len(tokens) if mask is None else [int(c) for c in np.asarray(mask).reshape(-1)]
    scored = [t for t, c in zip(tokens, cats) if c > 0]
    valid = [t for t in scored if t is not None]
    he = [t for t in valid if t["in_topk"] and t["entropy"] > threshold]
    n, n_he = len(valid), len(he)
    nan = float("nan")
    return dict(
        num_tokens=n,
        num_invalid=len(scored) - n,
        num_high_entropy=n_he,
        hesnr=sum(math.exp(t["logp"]) / t["entropy"] for t in he) / n_he if n_he else nan,
        hesnr_topk=sum(math.exp(t["logq"]) / t["entropy"] for t in he) / n_he if n_he else nan,
        he_ppl=math.exp(sum(-t["logp"] for t in he) / n_he) if n_he else nan,
        ppl=math.exp(sum(-t["logp"] for t in valid) / n) if n else nan,
        top1_acc=sum(t["top1"] for t in valid) / n if n else nan,
        topk_acc=sum(t["in_topk"] for t in valid) / n if n else nan,
        high_entropy_fraction=n_he / n if n else nan,
        mean_entropy=sum(t["entropy"] for t in valid) / n if n else nan,
    )


def assert_metrics_close(got: dict, want: dict, rel: float = 1e-6) -> None:
    for key, w in want.items():
        g = got[key]
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g), f"{key}: got {g}, want NaN"
        else:
            assert g == w or abs(g - w) <= rel * max(abs(w), 1e-300), f"{key}: got {g!r}, want {w!r}"
