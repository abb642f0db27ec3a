"""Cutting trajectories longer than ``--seq-length`` into model inputs (pure functions).

A trajectory of ``L`` tokens has targets ``1 .. L-1`` (target ``j`` is predicted from
the logits at position ``j - 1``).  A window is a slice ``tokens[start:end]`` with at
most ``seq_length + 1`` tokens, i.e. ``seq_length`` inputs and their labels, exactly
like one Megatron GPT sample.  A window *scores* the targets ``score_from .. end-1``;
every target is scored by exactly one window.

Policies:

* ``truncate``: one window from the start; targets beyond ``seq_length`` are dropped.
* ``window``: windows start every ``stride`` tokens, each scoring only targets no
  earlier window could see; target ``j`` is scored by the window that starts
  earliest among those containing it, so it gets the most context that fits
  (at least ``seq_length - stride`` tokens once past the first window).  The last
  window is moved back to end at the last token, which gives its targets more
  context than a window on the stride grid would.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    start: int
    """First token of the window (position 0 of its input)."""
    end: int
    """One past the last token: inputs are ``start .. end-2``, labels ``start+1 .. end-1``."""
    score_from: int
    """First target this window scores (``start < score_from <= end - 1``)."""

    @property
    def num_inputs(self) -> int:
        return self.end - self.start - 1


def plan_windows(length: int, seq_length: int, policy: str = "window", stride: int | None = None) -> list[Window]:
    """Windows covering a trajectory of ``length`` tokens (see the module doc)."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    if length < 2:
        return []  # no target at all
    last = length - 1  # last target index
    if last <= seq_length or policy == "truncate":
        if policy not in ("truncate", "window"):
            raise ValueError(f"unknown long-trajectory policy {policy!r}")
        end = min(length, seq_length + 1)
        return [Window(0, end, 1)]
    if policy != "window":
        raise ValueError(f"unknown long-trajectory policy {policy!r}")
    if stride is None:
        stride = max(1, seq_length // 2)
    if not 1 <= stride <= seq_length:
        raise ValueError(f"stride must be in [1, seq_length={seq_length}], got {stride}")
    windows = [Window(0, seq_length + 1, 1)]
    scored_to = seq_length  # targets 1..scored_to are done
    start = 0
    while scored_to < last:
        start += stride
        if start + seq_length >= last:
            # Final window: end at the last token, as far back as seq_length allows.
            start = max(last - seq_length, 0)
            windows.append(Window(start, length, scored_to + 1))
            break
        windows.append(Window(start, start + seq_length + 1, scored_to + 1))
        scored_to = start + seq_length
    return windows


def window_sample(tokens: np.ndarray, mask: np.ndarray, window: Window, seq_length: int, pad_id: int = 0):
    """``(inputs, labels, score_mask)`` of one window, each ``[seq_length]`` (right-padded).

    ``score_mask[i]`` is the category of target ``window.start + 1 + i`` when this window
    scores it, else 0; padding positions are 0, so they are never scored.
    """
    s, e = window.start, window.end
    n = e - s - 1
    if n > seq_length:
        raise ValueError(f"window of {n} inputs exceeds seq_length {seq_length}")
    inputs = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, pad_id, dtype=np.int64)
    score = np.zeros(seq_length, dtype=np.int64)
    inputs[:n] = tokens[s:e - 1]
    labels[:n] = tokens[s + 1:e]
    first = window.score_from - (s + 1)  # first scored label position
    score[first:n] = mask[window.score_from:e]
    return inputs, labels, score


def scored_targets(length: int, windows: list[Window]) -> np.ndarray:
    """How many windows score each token index (a check: 1 for every scored target)."""
    count = np.zeros(max(length, 0), dtype=np.int64)
    for w in windows:
        count[w.score_from:w.end] += 1
    return count
