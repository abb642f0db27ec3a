"""JSONL of chat trajectories, one per line (SWE-smith, SWE-Gym and similar datasets).

A line is a list of messages or an object holding them under ``messages``
(or ``conversations`` / ``history``). Each line is one trajectory; a bad line is
reported (file:line and reason) and the other lines are still read. Lines are read
with a byte limit, so one gigantic line cannot exhaust memory.
"""
from __future__ import annotations

from ..segments import Trajectory
from .base import Limits, ReadError, decode_utf8, parse_json
from .messages import messages_to_trajectory

FORMAT = "chat-jsonl"
_KEYS = ("messages", "conversations", "history")


def _messages(obj):
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for key in _KEYS:
            if isinstance(obj.get(key), list):
                return obj[key]
        raise ReadError(f"unknown schema: object without {'/'.join(_KEYS)} (keys: {sorted(obj)[:8]})")
    raise ReadError(f"unknown schema: a line must be a list of messages or an object, not {type(obj).__name__}")


def read(path: str, limits: Limits) -> tuple[list[Trajectory], list[str]]:
    """-> (trajectories, one error string per bad line)."""
    trajs, errors = [], []
    any_content = False
    with open(path, "rb") as f:
        lineno = 0
        while True:
            line = f.readline(limits.max_line_bytes + 1)
            if not line:
                break
            lineno += 1
            if len(line) > limits.max_line_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):   # skip the rest of the line
                    line = f.readline(1 << 20)
                errors.append(f"line {lineno}: longer than {limits.max_line_bytes} bytes (raise --max-line-bytes)")
                any_content = True
                continue
            if not line.strip():
                continue
            any_content = True
            try:
                obj = parse_json(decode_utf8(line))
                trajs.append(messages_to_trajectory(_messages(obj), f"{path}:{lineno}", FORMAT))
            except ReadError as exc:
                errors.append(f"line {lineno}: {exc}")
            except RecursionError:
                errors.append(f"line {lineno}: nested too deeply")
    if not any_content:
        raise ReadError("empty file")
    return trajs, errors
