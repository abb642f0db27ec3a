"""Cutting prepared trajectories into model-sized evaluation windows.

A trajectory longer than the model's context is read in overlapping windows of
``seq_length`` tokens, ``stride`` apart; each label position is scored in exactly one
window (the first that reaches it), so every scored token counts once and has at
least ``seq_length - stride`` tokens of context (or all of them, near the start).
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
        for lo in range(0, self.num_windows, batch_size):
            hi = lo + batch_size
            yield self.inputs[lo:hi], self.labels[lo:hi], self.mask[lo:hi]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("inputs", "labels", "mask", "doc", "position")}


def document_windows(n: int, seq_length: int, stride: int):
    """``(start, first_new, end)`` per window of a document of ``n`` tokens.

    The window reads tokens ``[start, end)`` and predicts labels at positions
    ``start + 1 .. end``; the labels at positions ``first_new .. end`` are new.
    """
    if not 0 < stride <= seq_length:
        raise ValueError(f"stride must be in [1, seq_length={seq_length}], got {stride}")
    out, start, scored = [], 0, 0
    while scored < n - 1:
        end = min(start + seq_length, n - 1)
        out.append((start, scored + 1, end))
        scored = end
        start += stride
    return out


def make_windows(docs: list[tuple[np.ndarray, np.ndarray]], seq_length: int, stride: int) -> EvalWindows:
    """Windows over ``docs`` = [(token ids, per-token mask categories), ...]."""
    rows = []
    for d, (tokens, mask) in enumerate(docs):
        tokens = np.asarray(tokens, dtype=np.int64)
        mask = np.asarray(mask, dtype=np.int64)
        if tokens.shape != mask.shape:
            raise ValueError(f"document {d}: {tokens.shape[0]} tokens but {mask.shape[0]} mask entries")
        for start, first_new, end in document_windows(len(tokens), seq_length, stride):
            t = end - start
            inp = np.zeros(seq_length, dtype=np.int64)
            lab = np.full(seq_length, IGNORE, dtype=np.int64)
            msk = np.zeros(seq_length, dtype=np.int64)
            pos = np.full(seq_length, -1, dtype=np.int64)
            inp[:t] = tokens[start:end]
            lab[:t] = tokens[start + 1:end + 1]
            positions = np.arange(start + 1, end + 1)
            new = positions >= first_new
            msk[:t] = np.where(new, mask[start + 1:end + 1], 0)
            pos[:t] = np.where(new, positions, -1)
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
