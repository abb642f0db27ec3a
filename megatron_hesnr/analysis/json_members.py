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
#: Bytes that matter for the structure: brackets, quotes, backslashes.
_SPECIAL = np.zeros(256, dtype=bool)
_SPECIAL[[*_OPEN, *_CLOSE, _QUOTE, _BACKSLASH]] = True


def _structure(raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions of the quotes that open or close strings, positions of the brackets
    outside strings) of ``raw``, from one table lookup over its bytes."""
    a = np.frombuffer(raw, dtype=np.uint8)
    pos = np.flatnonzero(_SPECIAL[a])
    kind = a[pos]
    q = pos[kind == _QUOTE]
    for b in pos[kind == _BACKSLASH].tolist():  # escapes: rare in a record
        if b + 1 < len(a) and a[b + 1] == _QUOTE:
            break
    else:
        b = None
    if b is not None and len(q):
        keep = np.ones(len(q), dtype=bool)
        for i, p in enumerate(q.tolist()):  # a quote after backslashes: escaped iff their number is odd
            j, n = p - 1, 0
            while j >= 0 and a[j] == _BACKSLASH:
                n, j = n + 1, j - 1
            keep[i] = n % 2 == 0
        q = q[keep]
    if len(q) % 2:
        return None
    br = pos[(kind != _QUOTE) & (kind != _BACKSLASH)]
    return q, br[np.searchsorted(q, br, side="right") % 2 == 0]


def top_level_members(raw: bytes) -> dict[str, tuple[int, int]] | None:
    """``{key: (start, end)}``: byte span of each top-level member's value in ``raw``
    (one JSON object), or ``None`` when the line is not a well-formed object."""
    found = _structure(raw)
    if found is None:
        return None
    quotes, brackets = found
    if len(brackets) < 2:
        return None
    kinds = np.frombuffer(raw, dtype=np.uint8)[brackets]
    depth_after = np.cumsum(np.where((kinds == _OPEN[0]) | (kinds == _OPEN[1]), 1, -1))
    if kinds[0] != _OPEN[0] or kinds[-1] != _CLOSE[0] or depth_after[-1] != 0 or (depth_after[:-1] <= 0).any():
        return None
    start, end = int(brackets[0]), int(brackets[-1])
    if raw[:start].strip() or raw[end + 1:].strip():
        return None
    # The object's own level lies between its nested values: short stretches only.
    seps = []
    for i in np.flatnonzero(depth_after == 1).tolist():
        lo, hi = int(brackets[i]) + 1, int(brackets[i + 1])
        for ch in (b",", b":"):
            p = raw.find(ch, lo, hi)
            while p != -1:
                seps.append(p)
                p = raw.find(ch, p + 1, hi)
    seps = np.array(sorted(seps), dtype=np.int64)
    seps = seps[np.searchsorted(quotes, seps, side="right") % 2 == 0]
    if len(brackets) == 2 and raw[start + 1:end].strip() == b"":  # "{}" (a short slice: nothing nested)
        return {}
    out = {}
    lo = start
    expect_colon = True
    colon = -1
    for p in seps.tolist() + [end]:
        c = raw[p:p + 1] if p != end else b","
        if expect_colon:
            if c != b":":
                return None
            colon, expect_colon = p, False
            continue
        if c != b",":
            return None
        try:
            key = json.loads(raw[lo + 1:colon])
        except ValueError:
            return None
        if not isinstance(key, str):
            return None
        out[key] = (colon + 1, p)
        lo, expect_colon = p, True
    return out if expect_colon else None
