"""Where the top-level members of one JSON object line are, without decoding them.

A record line is a few hundred bytes of fields and megabytes of ``state``.  To pick
two checkpoints out of a file, ``hesnr compare`` decodes every line's small members
and only the chosen lines' ``state``.  :func:`top_level_members` finds the members
with vectorised byte scans (quotes, then brackets and separators outside strings);
anything it cannot make sense of returns ``None`` and the caller decodes the whole
line (which then reports the JSON error itself).
"""
from __future__ import annotations

import json

import numpy as np

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = (ord("{"), ord("["))
_CLOSE = (ord("}"), ord("]"))


def _string_quotes(a: np.ndarray) -> np.ndarray | None:
    """Positions of the quotes that open or close strings (escaped ones dropped)."""
    q = np.flatnonzero(a == _QUOTE)
    if len(q) == 0:
        return q
    prev = q - 1
    cand = np.flatnonzero((prev >= 0) & (a[np.maximum(prev, 0)] == _BACKSLASH))
    if len(cand):
        keep = np.ones(len(q), dtype=bool)
        for i in cand.tolist():  # a quote after backslashes: escaped iff their number is odd
            j, n = int(q[i]) - 1, 0
            while j >= 0 and a[j] == _BACKSLASH:
                n, j = n + 1, j - 1
            keep[i] = n % 2 == 0
        q = q[keep]
    return q if len(q) % 2 == 0 else None


def top_level_members(raw: bytes) -> dict[str, tuple[int, int]] | None:
    """``{key: (start, end)}``: byte span of each top-level member's value in ``raw``
    (one JSON object), or ``None`` when the line is not a well-formed object."""
    a = np.frombuffer(raw, dtype=np.uint8)
    quotes = _string_quotes(a)
    if quotes is None:
        return None

    def outside(pos: np.ndarray) -> np.ndarray:
        return pos[np.searchsorted(quotes, pos, side="right") % 2 == 0]

    brackets = outside(np.flatnonzero((a == _OPEN[0]) | (a == _OPEN[1]) | (a == _CLOSE[0]) | (a == _CLOSE[1])))
    if len(brackets) < 2:
        return None
    step = np.where((a[brackets] == _OPEN[0]) | (a[brackets] == _OPEN[1]), 1, -1)
    depth_after = np.cumsum(step)
    if a[brackets[0]] != _OPEN[0] or depth_after[-1] != 0 or (depth_after[:-1] <= 0).any():
        return None
    start, end = int(brackets[0]), int(brackets[-1])
    if raw[:start].strip() or raw[end + 1:].strip() or a[end] != _CLOSE[0]:
        return None

    def depth_at(pos: np.ndarray) -> np.ndarray:
        i = np.searchsorted(brackets, pos, side="right") - 1
        return np.where(i >= 0, depth_after[np.maximum(i, 0)], 0)

    commas = outside(np.flatnonzero(a == ord(",")))
    commas = commas[depth_at(commas) == 1]
    colons = outside(np.flatnonzero(a == ord(":")))
    colons = colons[depth_at(colons) == 1]
    bounds = [start] + commas.tolist() + [end]
    if len(colons) != len(bounds) - 1 or raw[start + 1:end].strip() == b"":
        return None if raw[start + 1:end].strip() else {}
    out = {}
    for (lo, hi), colon in zip(zip(bounds[:-1], bounds[1:]), colons.tolist()):
        if not lo < colon < hi:
            return None
        try:
            key = json.loads(raw[lo + 1:colon])
        except ValueError:
            return None
        if not isinstance(key, str):
            return None
        out[key] = (colon + 1, hi)
    return out
