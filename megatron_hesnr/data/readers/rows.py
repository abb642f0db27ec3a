"""Dataset rows, one trajectory per row, whatever the file type (JSONL, parquet, JSON list).

A row is an object holding the chat under ``messages``, ``trajectory``,
``conversations`` or ``history`` (or is itself a list of messages). Sources seen in
public SFT sets:

- SWE-smith: ``messages`` is the chat as a JSON *string*; ``resolved``, ``instance_id``,
  ``traj_id``, ``model``, ``patch`` beside it. Format ``swe-smith``.
- nebius SWE-agent-trajectories: ``trajectory`` is a list of ``{role, text, ...}`` with
  roles ``system`` / ``user`` / ``ai``; ``target`` is true when the patch passed. Format
  ``nebius``.
- SWE-Gym / SWE-rebench-OpenHands / SWE-Zero: ``messages`` or ``trajectory`` lists of
  OpenAI-style messages with ``tool_calls``; ``resolved`` as 0/1 or bool. Format
  ``chat-rows``.

:func:`collect` applies the row selection (:mod:`..row_select`) before converting a
row, and turns every bad row into one error (``UNIT N: reason``) while the other rows
are still read. Parquet and JSONL of the same rows give the same trajectories.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from ..row_select import RowSelect, drop_reason
from ..segments import Trajectory
from .base import ReadError
from .messages import messages_to_trajectory

KEYS = ("messages", "trajectory", "conversations", "history")


def is_row(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(obj.get(k), (list, str)) for k in KEYS)


def row_messages(row) -> tuple[list, str]:
    """-> (messages, format name)."""
    if isinstance(row, list):
        return row, "chat-rows"
    if not isinstance(row, dict):
        raise ReadError(f"unknown schema: a row must be an object or a list of messages, not {type(row).__name__}")
    for key in KEYS:
        value = row.get(key)
        if value is None:
            continue
        fmt = "chat-rows"
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ReadError(f"{key!r} is a string but not JSON ({exc.msg} at line {exc.lineno} "
                                f"column {exc.colno})") from None
            except (ValueError, RecursionError) as exc:   # huge integers, deep nesting
                raise ReadError(f"{key!r} is a string but not readable JSON ({exc or type(exc).__name__})") from None
            fmt = "swe-smith"
        if not isinstance(value, list):
            raise ReadError(f"{key!r} must be a list of messages, not {type(value).__name__}")
        if any(isinstance(m, dict) and m.get("role") == "ai" for m in value):
            fmt = "nebius"
        return value, fmt
    raise ReadError(f"unknown schema: object without {'/'.join(KEYS)} (keys: {sorted(row)[:8]})")


@dataclass
class Rows:
    """What :func:`collect` read from one file."""

    trajectories: list[Trajectory] = field(default_factory=list)
    row_ids: list[int] = field(default_factory=list)      # row number of each trajectory
    errors: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)

    @property
    def format(self) -> str:
        return "+".join(sorted(self.formats)) if self.formats else ""


def collect(items, path: str, unit: str, parse=None, select: RowSelect | None = None,
            allowed=None) -> Rows:
    """``items`` yields ``(row number, raw row)``; ``parse`` turns a raw row into an object
    (raising ReadError) or is None; rows whose number is not in ``allowed`` (when given)
    are skipped before being parsed."""
    out = Rows()
    for n, raw in items:
        if allowed is not None and n not in allowed:
            continue
        try:
            if isinstance(raw, ReadError):
                raise raw
            row = parse(raw) if parse else raw
            reason = drop_reason(row, select)
            if reason is not None:
                out.dropped[reason] += 1
                continue
            messages, fmt = row_messages(row)
            out.trajectories.append(messages_to_trajectory(messages, f"{path}:{n}", fmt))
            out.row_ids.append(n)
            out.formats[fmt] += 1
        except ReadError as exc:
            out.errors.append(f"{unit} {n}: {exc}")
        except RecursionError:
            out.errors.append(f"{unit} {n}: nested too deeply")
    return out
