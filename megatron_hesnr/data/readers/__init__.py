"""Readers: one trajectory file -> :class:`~megatron_hesnr.data.segments.Trajectory` list.

Formats (detected from the content; JSONL and parquet from the suffix):

- SWE-agent ``.traj`` (default / xml / function-calling variants): ``swe_agent``
- mini-swe-agent ``.traj.json``: ``mini_swe_agent``
- OpenHands event stream ``.json`` (a list of events): ``openhands``
- dataset rows, one trajectory per row (SWE-smith, nebius, SWE-Gym, SWE-rebench-OpenHands,
  ...): JSONL lines (``chat_jsonl``), parquet rows (``parquet``) or a JSON list of rows;
  the row formats are in :mod:`.rows`.

Every reader applies the row selection (``select``: field filters; ``allowed``: the row
numbers chosen by ``--limit`` / ``--sample``) before converting a row. A single-trajectory
file is one row (number 1) whose fields are its top-level object's.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..row_select import drop_reason
from ..segments import Trajectory
from . import chat_jsonl, mini_swe_agent, openhands, parquet, rows, swe_agent
from .base import Limits, ReadError, read_json_file
from .messages import messages_to_trajectory

__all__ = ["Limits", "ReadError", "ReadResult", "file_parts", "read_trajectories", "SUFFIXES"]

#: Files picked up when a directory is given on the command line.
SUFFIXES = (".traj", ".traj.json", ".jsonl", ".json", ".parquet")


@dataclass
class ReadResult:
    trajectories: list[Trajectory]
    format: str
    errors: list[str] = field(default_factory=list)   # per row; the file itself was readable
    row_ids: list[int] = field(default_factory=list)  # row number of each trajectory
    dropped: Counter = field(default_factory=Counter)  # rows dropped, per filter label


def _from_rows(r: rows.Rows, fallback: str) -> ReadResult:
    return ReadResult(r.trajectories, r.format or fallback, r.errors, r.row_ids, r.dropped)


def _single(obj, path: str):
    """-> (format, reader) for a file holding one trajectory, or None."""
    if swe_agent.is_swe_agent(obj):
        return swe_agent.FORMAT, lambda: swe_agent.read(obj, path)
    if openhands.is_event_stream(obj):
        return openhands.FORMAT, lambda: openhands.read(obj, path)
    if mini_swe_agent.is_mini_swe_agent(obj):
        return mini_swe_agent.FORMAT, lambda: mini_swe_agent.read(obj, path)
    if rows.is_row(obj):   # one dataset row saved alone (e.g. SWE-smith's messages string)
        def read_row():
            messages, fmt = rows.row_messages(obj)
            return messages_to_trajectory(messages, path, fmt)
        return "json-row", read_row
    return None


def file_parts(path: str) -> list:
    """The parts a file is read in (see :mod:`.parquet`); ``[None]``: the whole file."""
    return parquet.parts(path) if path.endswith(".parquet") else [None]


def read_trajectories(path: str, limits: Limits | None = None, select=None, allowed=None,
                      part=None) -> ReadResult:
    """Read one file (or one part of it). Raises :class:`ReadError` (reason only, no path)
    if nothing can be read."""
    limits = limits or Limits()
    if path.endswith(".jsonl"):
        return _from_rows(chat_jsonl.read(path, limits, select, allowed), chat_jsonl.FORMAT)
    if path.endswith(".parquet"):
        return _from_rows(parquet.read(path, select, allowed, part), "parquet")
    obj = read_json_file(path, limits)
    if isinstance(obj, list) and obj and all(rows.is_row(r) for r in obj[:3]):
        return _from_rows(rows.collect(enumerate(obj, 1), path, "row", None, select, allowed), "json-rows")
    single = _single(obj, path)
    if single is None:
        if isinstance(obj, dict):
            raise ReadError(f"unknown schema: JSON object with keys {sorted(obj)[:8]} (expected SWE-agent "
                            "'history'/'trajectory', a 'messages' list or an OpenHands event list)")
        raise ReadError(f"unknown schema: top-level JSON {type(obj).__name__} is not a list of chat messages, "
                        "OpenHands events or dataset rows")
    fmt, reader = single
    if allowed is not None and 1 not in allowed:
        return ReadResult([], fmt)
    reason = drop_reason(obj, select)
    if reason is not None:
        return ReadResult([], fmt, dropped=Counter({reason: 1}))
    return ReadResult([reader()], fmt, row_ids=[1])
