"""JSONL of dataset rows, one trajectory per line (SWE-smith, SWE-Gym, nebius exports, ...).

A line is a row as :mod:`.rows` reads it. A bad line is reported (``line N`` and the
reason) and the other lines are still read. Lines are read with a byte limit, so one
gigantic line cannot exhaust memory; lines not selected are not parsed.
"""
from __future__ import annotations

from .base import Limits, ReadError, decode_utf8, parse_json
from .rows import Rows, collect

FORMAT = "chat-jsonl"


def _lines(f, limits: Limits, seen: list):
    lineno = 0
    while True:
        line = f.readline(limits.max_line_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limits.max_line_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):   # skip the rest of the line
                line = f.readline(1 << 20)
            seen.append(lineno)
            yield lineno, ReadError(f"longer than {limits.max_line_bytes} bytes (raise --max-line-bytes)")
            continue
        if line.strip():
            seen.append(lineno)
            yield lineno, line


def _parse(line: bytes):
    return parse_json(decode_utf8(line))


def read(path: str, limits: Limits, select=None, allowed=None) -> Rows:
    """-> :class:`Rows` (trajectories, one error string per bad line, rows dropped)."""
    seen: list[int] = []
    with open(path, "rb") as f:
        rows = collect(_lines(f, limits, seen), path, "line", _parse, select, allowed)
    if not seen:
        raise ReadError("empty file")
    return rows
