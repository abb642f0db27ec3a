"""A clearly labelled stand-in for a downstream score: greedy agreement on held-out actions.

The paper correlates HE-SNR with SWE-bench resolve rates after SFT; nothing like that
can run on a laptop in minutes.  What can: how far does greedy decoding reproduce
each held-out action before its first wrong token?  With teacher forcing, the greedy
continuation of the true prefix agrees with the reference exactly as long as every
token is the model's top-1 prediction, so per action the score is the fraction of
its scored tokens before the first one that is not top-1 (1 = the action is
reproduced exactly; tokens dropped by the filters -- markup, comments, whitespace --
are not checked).  The proxy is the mean over actions; the exact-match rate (actions
with score 1) is reported beside it.

It is a proxy and is labelled as such everywhere it is written.  It comes from the
same forward passes as ``top1_acc`` and so correlates with it partly by
construction; it says nothing about SWE-bench.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PROXY_NAME = "proxy_greedy_action_prefix"
# The score axis of the demo's report (`hesnr report --score-label`).
PROXY_SCORE_LABEL = "proxy score (demo): greedy action prefix"
PROXY_DESCRIPTION = (
    "PROXY, not a downstream benchmark: mean over held-out agent actions of the fraction of the "
    "action's scored tokens that greedy decoding reproduces before its first mistake"
)


def action_groups(mask: np.ndarray, action: int = 1) -> list[np.ndarray]:
    """Positions of the scored tokens of each action of one document.

    Actions are separated by any token of another non-zero category (thought,
    observation).  When the mask carries only category 1 (no breakdown categories),
    a run of more than ``GAP`` unscored tokens separates actions instead.
    """
    mask = np.asarray(mask)
    scored = np.flatnonzero(mask == action)
    if scored.size == 0:
        return []
    others = np.flatnonzero((mask != 0) & (mask != action))
    groups, current = [], [scored[0]]
    for prev, pos in zip(scored[:-1], scored[1:]):
        if others.size:
            # Is there another category's token strictly between prev and pos?
            i = np.searchsorted(others, prev, side="right")
            split = i < others.size and others[i] < pos
        else:
            split = pos - prev - 1 > GAP
        if split:
            groups.append(np.asarray(current))
            current = []
        current.append(pos)
    groups.append(np.asarray(current))
    return groups


#: Unscored tokens that separate two actions when the mask has no other categories.
GAP = 32


def greedy_prefix(doc_masks: list[np.ndarray], top1_by_doc: list[np.ndarray]) -> dict:
    """``{"score": mean prefix fraction, "exact_match": fraction of actions reproduced, "actions": n}``."""
    fractions = []
    for mask, top1 in zip(doc_masks, top1_by_doc):
        for group in action_groups(mask):
            ok = np.asarray(top1[group], dtype=bool)
            first_miss = int(np.argmin(ok)) if not ok.all() else len(ok)
            fractions.append(first_miss / len(ok))
    if not fractions:
        return {"score": float("nan"), "exact_match": float("nan"), "actions": 0}
    f = np.asarray(fractions)
    return {"score": float(f.mean()), "exact_match": float((f == 1.0).mean()), "actions": len(f)}


def write_scores_csv(path: Path, rows: list[tuple[str, float]]) -> Path:
    """``checkpoint,score`` rows (the format ``hesnr report --scores`` reads)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "score"])
        for checkpoint, score in rows:
            w.writerow([checkpoint, f"{score:.6f}"])
    return path
