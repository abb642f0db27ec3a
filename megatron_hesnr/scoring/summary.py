"""What ``hesnr score`` prints at the end: one line per set and the records' path.

Each line gives HE-SNR, HE-PPL, PPL and top-1 with their trajectory-clustered standard errors,
the scored and high-entropy tokens and the trajectories; a metric that is NaN is named with the
reason (no high-entropy token, no scored token, a standard error over fewer than two trajectories).
"""
from __future__ import annotations

import math

#: (metric key, printed name, what its denominator counts)
METRICS = (("hesnr", "HE-SNR", "he"), ("he_ppl", "HE-PPL", "he"), ("ppl", "PPL", "all"),
           ("top1_acc", "top-1", "all"))


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _value(m: dict, key: str, name: str, den: str, threshold) -> str:
    v, se = m.get(key), m.get(key + "_stderr")
    if _nan(v):
        why = (f"no high-entropy token (none of {m.get('num_tokens', 0)} scored tokens has H_k > {threshold})"
               if den == "he" and m.get("num_tokens") else "no scored token")
        return f"{name} nan ({why})"
    if _nan(se):
        docs = m.get("num_documents")
        why = "fewer than 2 trajectories" if docs is not None and docs < 2 else "not tracked"
        return f"{name} {v:.6g} (no standard error: {why})"
    return f"{name} {v:.6g} ± {se:.2g}"


def set_line(record: dict) -> str:
    """One set's result, from its record."""
    m = record["metrics"]
    threshold = m.get("threshold")
    parts = [_value(m, key, name, den, threshold) for key, name, den in METRICS]
    n, n_he, docs = m.get("num_tokens", 0), m.get("num_high_entropy", 0), m.get("num_documents")
    counts = f"{n} scored tokens, {n_he} high-entropy"
    if m.get("num_invalid"):
        counts += f", {m['num_invalid']} not scorable (ids beyond the vocabulary or non-finite logits)"
    traj = f"{docs} trajectories" if docs is not None else "trajectories not tracked"
    return f"{record.get('dataset')}: {', '.join(parts)}; {counts}; {traj}"


def summary_lines(records: list[dict], out: str) -> list[str]:
    return [f"hesnr score: {set_line(r)}" for r in records] + [f"hesnr score: records in {out}"]
