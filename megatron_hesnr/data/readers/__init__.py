"""Readers: one trajectory file -> :class:`~megatron_hesnr.data.segments.Trajectory` list.

Formats (detected from the content, JSONL from the ``.jsonl`` suffix):

- SWE-agent ``.traj`` (default / xml / function-calling variants): ``swe_agent``
- mini-swe-agent ``.traj.json``: ``mini_swe_agent``
- chat JSONL with ``tool_calls`` (SWE-smith, SWE-Gym, ...): ``chat_jsonl``
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..segments import Trajectory
from . import chat_jsonl, mini_swe_agent, swe_agent
from .base import Limits, ReadError, read_json_file

__all__ = ["Limits", "ReadError", "ReadResult", "read_trajectories", "SUFFIXES"]

#: Files picked up when a directory is given on the command line.
SUFFIXES = (".traj", ".traj.json", ".jsonl", ".json")


@dataclass
class ReadResult:
    trajectories: list[Trajectory]
    format: str
    errors: list[str] = field(default_factory=list)   # per JSONL line; the file itself was readable


def read_trajectories(path: str, limits: Limits | None = None) -> ReadResult:
    """Read one file. Raises :class:`ReadError` (reason only, no path) if nothing can be read."""
    limits = limits or Limits()
    if path.endswith(".jsonl"):
        trajs, errors = chat_jsonl.read(path, limits)
        return ReadResult(trajs, chat_jsonl.FORMAT, errors)
    obj = read_json_file(path, limits)
    if swe_agent.is_swe_agent(obj):
        return ReadResult([swe_agent.read(obj, path)], swe_agent.FORMAT)
    if mini_swe_agent.is_mini_swe_agent(obj):
        return ReadResult([mini_swe_agent.read(obj, path)], mini_swe_agent.FORMAT)
    if isinstance(obj, dict):
        raise ReadError(f"unknown schema: JSON object with keys {sorted(obj)[:8]} "
                        "(expected SWE-agent 'history'/'trajectory' or a 'messages' list)")
    raise ReadError(f"unknown schema: top-level JSON {type(obj).__name__} is not a list of chat messages")
