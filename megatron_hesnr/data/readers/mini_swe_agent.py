"""mini-swe-agent ``.traj.json``: a list of chat messages, or an object with
``messages`` (newer versions add ``info`` and ``trajectory_format``). Actions are the
```` ```bash ```` / ```` ```mswea_bash_command ```` block of each assistant message.
"""
from __future__ import annotations

from ..segments import Trajectory
from .messages import messages_to_trajectory

FORMAT = "mini-swe-agent"


def is_message_list(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(m, dict) and "role" in m for m in obj[:3])


def is_mini_swe_agent(obj) -> bool:
    return is_message_list(obj) or (isinstance(obj, dict) and is_message_list(obj.get("messages")))


def read(obj, source: str) -> Trajectory:
    messages = obj["messages"] if isinstance(obj, dict) else obj
    return messages_to_trajectory(messages, source, FORMAT)
