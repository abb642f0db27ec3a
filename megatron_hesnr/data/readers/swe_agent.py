"""SWE-agent ``.traj`` files: a JSON object with ``history`` (chat messages).

All three action formats store the same ``history``: "default" (thought + fenced
command in the text, the command also in ``action``), "xml" (``<command>`` tags) and
function calling (thought in the text, the call in ``tool_calls``). Old files without
``history`` are read from ``trajectory`` steps (thought / action / observation).
"""
from __future__ import annotations

from ..segments import Kind, Message, Trajectory
from .base import ReadError
from .messages import messages_to_trajectory

FORMAT = "swe-agent"


def is_swe_agent(obj) -> bool:
    return isinstance(obj, dict) and ("history" in obj or "trajectory" in obj)


def from_steps(steps, source: str) -> Trajectory:
    if not isinstance(steps, list) or not steps:
        raise ReadError("'trajectory' has no steps")
    traj = Trajectory(source=source, format=FORMAT)
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("action"), str):
            raise ReadError(f"trajectory step {i}: missing 'action'")
        msg = Message("assistant")
        msg.add(Kind.THOUGHT, step.get("thought") or "")
        msg.add(Kind.ACTION_MARKUP, "\n```\n")
        msg.add(Kind.ACTION_CONTENT, step["action"].strip(), "shell")
        msg.add(Kind.ACTION_MARKUP, "\n```")
        traj.messages.append(msg)
        obs = Message("user")
        obs.add(Kind.OBSERVATION, step.get("observation") or "")
        traj.messages.append(obs)
    return traj


def read(obj, source: str) -> Trajectory:
    history = obj.get("history")
    if history:
        return messages_to_trajectory(history, source, FORMAT)
    steps = obj.get("trajectory")
    if isinstance(steps, list) and steps and isinstance(steps[0], dict) and "role" in steps[0]:
        return messages_to_trajectory(steps, source, FORMAT)   # a nebius-style row saved alone
    return from_steps(steps, source)
