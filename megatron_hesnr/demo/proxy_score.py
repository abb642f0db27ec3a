"""A clearly labelled stand-in for a downstream score: greedy action exact match.

The paper correlates HE-SNR with SWE-bench resolve rates after SFT; nothing like that
can run on a laptop in minutes.  What can: for every held-out action, does greedy
decoding reproduce its scored content exactly?  With teacher forcing that is "every
scored token of the action is the model's top-1 prediction given the true prefix"
(tokens dropped by the filters -- markup, comments, whitespace -- are not checked).

It is a proxy and is labelled as such everywhere it is written.  It comes from the
same forward passes as ``top1_acc`` and so correlates with it partly by
construction; it says nothing about SWE-bench.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PROXY_NAME = "proxy_action_exact_match"
PROXY_DESCRIPTION = (
    "PROXY, not a downstream benchmark: fraction of held-out agent actions whose scored tokens "
    "are all the model's greedy (top-1) predictions under teacher forcing"
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


def exact_match(doc_masks: list[np.ndarray], top1_by_doc: list[np.ndarray]) -> tuple[float, int]:
    """(fraction of actions reproduced exactly, number of actions)."""
    hits = total = 0
    for mask, top1 in zip(doc_masks, top1_by_doc):
        for group in action_groups(mask):
            total += 1
            hits += int(bool(np.all(top1[group])))
    return (hits / total if total else float("nan")), total


def top1_by_document(top1: np.ndarray, doc: np.ndarray, position: np.ndarray, doc_lengths: list[int]) -> list[np.ndarray]:
    """Scatter per-window top-1 flags ``[W, T]`` back to per-document arrays."""
    out = [np.zeros(n, dtype=bool) for n in doc_lengths]
    for w in range(top1.shape[0]):
        pos = position[w]
        sel = pos >= 0
        out[int(doc[w])][pos[sel]] = top1[w][sel]
    return out


def write_scores_csv(path: Path, rows: list[tuple[str, float]]) -> Path:
    """``checkpoint,score`` rows (the format ``hesnr report --scores`` reads)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "score"])
        for checkpoint, score in rows:
            w.writerow([checkpoint, f"{score:.6f}"])
    return path
