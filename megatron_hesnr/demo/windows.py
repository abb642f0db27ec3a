"""Cutting prepared trajectories into model-sized evaluation windows.

The plan is the Megatron integration's own (``evaluation.windows``, policy
``window``): overlapping windows of ``seq_length`` tokens, ``stride`` apart, each
target scored by exactly one window with at least ``seq_length - stride`` tokens of
context.  This module only stacks the windows of a whole evaluation set and keeps,
per label, its position in the trajectory (for the per-action proxy score).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass
class EvalWindows:
    """All windows of an evaluation set, padded to ``seq_length``."""

    inputs: torch.Tensor
    """[W, T] input ids (0 where padded)."""
    labels: torch.Tensor
    """[W, T] next-token ids, ``IGNORE`` where padded."""
    mask: torch.Tensor
    """[W, T] scoring categories of the labels (0 where padded or already scored)."""
    doc: torch.Tensor
    """[W] document index of each window."""
    position: torch.Tensor
    """[W, T] position of each label in its document (-1 where padded)."""

    @property
    def num_windows(self) -> int:
        return self.inputs.shape[0]

    def batches(self, batch_size: int):
        """(inputs, labels, mask, doc_ids) per batch; ``doc_ids`` [b, T] is the window's
        trajectory index at every position (for the per-trajectory sums)."""
        for lo in range(0, self.num_windows, batch_size):
            hi = lo + batch_size
            doc_ids = self.doc[lo:hi, None].expand(-1, self.labels.shape[1])
            yield self.inputs[lo:hi], self.labels[lo:hi], self.mask[lo:hi], doc_ids

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("inputs", "labels", "mask", "doc", "position")}


def make_windows(docs: list[tuple[np.ndarray, np.ndarray]], seq_length: int, stride: int) -> EvalWindows:
    """Windows over ``docs`` = [(token ids, per-token mask categories), ...]."""
    from ..evaluation.windows import plan_windows, window_sample

    rows = []
    for d, (tokens, mask) in enumerate(docs):
        tokens = np.asarray(tokens, dtype=np.int64)
        mask = np.asarray(mask, dtype=np.int64)
        if tokens.shape != mask.shape:
            raise ValueError(f"document {d}: {tokens.shape[0]} tokens but {mask.shape[0]} mask entries")
        for w in plan_windows(len(tokens), seq_length, "window", stride):
            inp, lab, msk = window_sample(tokens, mask, w, seq_length)
            n = w.num_inputs
            pos = np.full(seq_length, -1, dtype=np.int64)
            targets = np.arange(w.start + 1, w.end)
            pos[:n] = np.where(targets >= w.score_from, targets, -1)
            lab = lab.copy()
            lab[n:] = IGNORE  # padding is never a target
            rows.append((inp, lab, msk, d, pos))
    if not rows:
        raise ValueError("the evaluation set has no document longer than one token")
    return EvalWindows(
        inputs=torch.from_numpy(np.stack([r[0] for r in rows])),
        labels=torch.from_numpy(np.stack([r[1] for r in rows])),
        mask=torch.from_numpy(np.stack([r[2] for r in rows])),
        doc=torch.tensor([r[3] for r in rows], dtype=torch.long),
        position=torch.from_numpy(np.stack([r[4] for r in rows])),
    )
