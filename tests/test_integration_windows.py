"""Windowing of long trajectories: every scored target once, with the most context that fits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_hesnr.evaluation.windows import Window, plan_windows, scored_targets, window_sample


def _best_context(j, seq_length, stride, length):
    """Most context any allowed window gives target j (brute force over window starts)."""
    last = length - 1
    grid = list(range(0, length, stride))
    starts = set(grid) | {max(last - seq_length, 0)}
    return max(j - s for s in starts if s < j <= s + seq_length)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(0, 200), seq_length=st.integers(1, 40), data=st.data())
def test_window_policy_scores_each_target_once(length, seq_length, data):
    stride = data.draw(st.integers(1, seq_length))
    ws = plan_windows(length, seq_length, "window", stride)
    counts = scored_targets(length, ws)
    if length >= 2:
        assert (counts[1:] == 1).all() and counts[0] == 0
    else:
        assert ws == []
    for w in ws:
        assert 0 <= w.start < w.score_from <= w.end - 1 < length
        assert w.num_inputs <= seq_length
    # Each target's context equals the best any grid window (or the end-aligned one) offers.
    for w in ws:
        for j in range(w.score_from, w.end):
            assert j - w.start == _best_context(j, seq_length, stride, length)


def test_examples():
    assert plan_windows(10, 4, "window", 2) == [Window(0, 5, 1), Window(2, 7, 5), Window(4, 9, 7), Window(5, 10, 9)]
    assert plan_windows(10, 4, "truncate") == [Window(0, 5, 1)]
    assert plan_windows(5, 4, "truncate") == [Window(0, 5, 1)]
    assert plan_windows(5, 8, "window") == [Window(0, 5, 1)]
    assert plan_windows(1, 8) == []
    # stride = seq_length: disjoint chunks, the last one moved back to end at the last token.
    assert plan_windows(11, 4, "window", 4) == [Window(0, 5, 1), Window(4, 9, 5), Window(6, 11, 9)]


def test_truncate_drops_tail():
    counts = scored_targets(30, plan_windows(30, 8, "truncate"))
    assert counts[1:9].tolist() == [1] * 8 and counts[9:].sum() == 0


@pytest.mark.parametrize("bad,match", [(dict(stride=0), r"stride must be in \[1, seq_length=8\], got 0"),
                                       (dict(stride=9), r"stride must be in \[1, seq_length=8\], got 9"),
                                       (dict(policy="slide"), "unknown long-trajectory policy 'slide'")])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        plan_windows(50, 8, bad.get("policy", "window"), bad.get("stride", 4))


def test_window_sample_shifts_and_masks():
    tokens = np.arange(100, 112, dtype=np.int64)
    mask = np.array([0, 1, 2, 3, 1, 1, 0, 1, 2, 1, 3, 1], dtype=np.uint8)
    w = Window(4, 10, 7)
    x, y, m = window_sample(tokens, mask, w, seq_length=8)
    assert x.tolist() == [104, 105, 106, 107, 108, 0, 0, 0]
    assert y.tolist() == [105, 106, 107, 108, 109, 0, 0, 0]
    # targets 5, 6 are scored by an earlier window; 7, 8, 9 here; padding never.
    assert m.tolist() == [0, 0, 1, 2, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="window of 11 inputs exceeds seq_length 8"):
        window_sample(tokens, mask, Window(0, 12, 1), seq_length=8)
