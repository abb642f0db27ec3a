"""OpenAI-style chat messages (with ``tool_calls``) -> :class:`Trajectory`.

Shared by every reader: SWE-agent's ``history``, mini-swe-agent's message list and
dataset rows (SWE-smith, SWE-Gym, SWE-rebench-OpenHands, nebius) are all lists of such
messages (nebius writes the text under ``text`` and the agent's role as ``ai``).
"""
from __future__ import annotations

import json

from ..segments import Kind, Message, ToolCall, Trajectory
from .base import ReadError, text_of
from .text_actions import split_text_action

_OBSERVATION_ROLES = ("tool", "function", "ipython", "observation", "environment")


def tool_call(call, where: str) -> ToolCall:
    if not isinstance(call, dict):
        raise ReadError(f"{where}: tool call must be an object")
    fn = call.get("function", call)  # {"function": {...}} (OpenAI) or flat {"name", "arguments"}
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ReadError(f"{where}: tool call without a function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):   # not JSON, or a number past Python's digit limit
            parsed = None
        if isinstance(parsed, dict):
            return ToolCall(fn["name"], parsed)
        return ToolCall(fn["name"], {}, raw_arguments=args)
    if isinstance(args, dict):
        return ToolCall(fn["name"], args)
    if args is None:
        return ToolCall(fn["name"], {})
    raise ReadError(f"{where}: tool call arguments must be a JSON object or string")


#: Tools whose call is the agent thinking aloud (OpenHands' and Anthropic's ``think``):
#: the argument is a thought, not an action.
THINK_TOOLS = ("think",)


def add_call(msg: Message, call: ToolCall) -> None:
    """Append a tool call to an assistant message; a ``think`` call becomes its thought."""
    if call.name in THINK_TOOLS:
        args = call.arguments
        text = args.get("thought", args.get("content")) if isinstance(args, dict) else None
        msg.add(Kind.THOUGHT, text if isinstance(text, str) else (call.raw_arguments or ""))
    else:
        msg.parts.append(call)


def messages_to_trajectory(messages, source: str, fmt: str) -> Trajectory:
    if not isinstance(messages, list) or not messages:
        raise ReadError("no messages")
    traj = Trajectory(source=source, format=fmt)
    seen_assistant = False
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict):
            raise ReadError(f"{where}: expected an object, got {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str):
            raise ReadError(f"{where}: missing 'role'")
        role = role.lower()
        content = m.get("content")
        if content is None and isinstance(m.get("text"), str):   # nebius rows: {role, text}
            content = m["text"]
        text = text_of(content, where)
        if role == "system":
            msg = Message("system")
            msg.add(Kind.SYSTEM, text)
        elif role in ("user", "human"):
            # Before the agent's first move a user turn is the task; after it, the
            # scaffold's reply to an action (SWE-agent, mini-swe-agent): an observation.
            msg = Message("user")
            msg.add(Kind.OBSERVATION if seen_assistant else Kind.USER, text)
        elif role in _OBSERVATION_ROLES:
            msg = Message("tool")
            msg.add(Kind.OBSERVATION, text)
        elif role in ("assistant", "ai", "gpt"):
            seen_assistant = True
            calls = m.get("tool_calls") or ([m["function_call"]] if m.get("function_call") else [])
            if calls:
                if not isinstance(calls, list):
                    raise ReadError(f"{where}: 'tool_calls' must be a list")
                msg = Message("assistant")
                msg.add(Kind.THOUGHT, text)
                for j, c in enumerate(calls):
                    add_call(msg, tool_call(c, f"{where} tool call {j}"))
            else:
                hint = m.get("action") if isinstance(m.get("action"), str) else None
                msg = split_text_action(text, hint)
        else:
            raise ReadError(f"{where}: unknown role {role!r}")
        traj.messages.append(msg)
    if not seen_assistant:
        raise ReadError("no assistant message")
    return traj
