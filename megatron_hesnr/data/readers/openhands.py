"""OpenHands event stream (the trajectory an OpenHands run saves): a JSON list of events.

Each event has ``source`` (``user`` / ``agent`` / ``environment``) and either ``action``
(with ``args``) or ``observation`` (with ``content``). What the model produced is in
``tool_call_metadata.model_response.choices[0].message``: its ``content`` is the
thought and its ``tool_calls`` the actions. One model response with several calls is
saved as several action events sharing that response; each event contributes the call
named by its ``tool_call_metadata.tool_call_id``, and the thought goes with the first.

Events without a model response (older runs) fall back to the event itself: the
action type (or ``function_name``) is the tool and ``args`` minus OpenHands' own
bookkeeping are its arguments. Agent ``message`` / ``finish`` / ``think`` events
without a tool call are thoughts; state changes and empty observations are skipped.
"""
from __future__ import annotations

from ..segments import Kind, Message, ToolCall, Trajectory
from .base import ReadError, text_of
from .messages import add_call, tool_call

FORMAT = "openhands"
_SKIP_ACTIONS = {"change_agent_state", "null"}
_SKIP_OBSERVATIONS = {"null", "agent_state_changed"}
_THOUGHT_ACTIONS = {"message", "finish", "think", "reject"}
#: ``args`` keys OpenHands adds to an action for itself; not what the agent chose.
_BOOKKEEPING = {"thought", "is_input", "blocking", "hidden", "confirmation_state", "impl_source",
                "translated_ipython_code", "security_risk", "image_urls", "wait_for_response",
                "kernel_init_code", "include_extra", "outputs", "task_completed", "final_thought"}


def is_event_stream(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and all(
        isinstance(e, dict) and "source" in e and ("action" in e or "observation" in e) for e in obj[:3])


def _response_message(tcm: dict, where: str):
    resp = tcm.get("model_response")
    if resp is None:
        return None
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
            or not isinstance(choices[0].get("message"), dict):
        raise ReadError(f"{where}: tool_call_metadata.model_response has no choices[0].message")
    return choices[0]["message"]


def _from_response(msg: dict, tcm: dict, where: str) -> Message:
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ReadError(f"{where}: model_response tool_calls must be a list")
    want = tcm.get("tool_call_id")
    index = next((j for j, c in enumerate(calls) if isinstance(c, dict) and c.get("id") == want), None)
    if index is None:
        if len(calls) != 1:
            raise ReadError(f"{where}: tool call {want!r} is not among the model response's {len(calls)} calls")
        index = 0
    out = Message("assistant")
    if index == 0:   # the response's text goes with its first call only
        reasoning = msg.get("reasoning_content")
        out.add(Kind.THOUGHT, (reasoning + "\n") if isinstance(reasoning, str) and reasoning else "")
        out.add(Kind.THOUGHT, text_of(msg.get("content"), where))
    add_call(out, tool_call(calls[index], f"{where} tool call {index}"))
    return out


def _from_args(name: str, args: dict, where: str) -> Message:
    out = Message("assistant")
    if isinstance(args.get("thought"), str):
        out.add(Kind.THOUGHT, args["thought"])
    kept = {k: v for k, v in args.items() if k not in _BOOKKEEPING and v not in (None, "")}
    add_call(out, ToolCall(name, kept))
    return out


def _agent_action(e: dict, where: str) -> Message | None:
    action = e["action"]
    args = e.get("args") if isinstance(e.get("args"), dict) else {}
    tcm = e.get("tool_call_metadata")
    if isinstance(tcm, dict):
        msg = _response_message(tcm, where)
        if msg is not None:
            return _from_response(msg, tcm, where)
        if isinstance(tcm.get("function_name"), str) and tcm["function_name"]:
            return _from_args(tcm["function_name"], args, where)
    if action in _THOUGHT_ACTIONS:
        text = next((args[k] for k in ("content", "final_thought", "thought") if isinstance(args.get(k), str)
                     and args[k]), e.get("message") if isinstance(e.get("message"), str) else "")
        out = Message("assistant")
        out.add(Kind.THOUGHT, text)
        return out
    if not isinstance(action, str) or not action:
        raise ReadError(f"{where}: action without a name")
    return _from_args(action, args, where)


def read(events, source: str) -> Trajectory:
    traj = Trajectory(source=source, format=FORMAT)
    agent_actions = 0
    for i, e in enumerate(events):
        where = f"event {i}"
        if not isinstance(e, dict):
            raise ReadError(f"{where}: expected an object, got {type(e).__name__}")
        src = e.get("source")
        if "observation" in e:
            if e["observation"] in _SKIP_OBSERVATIONS:
                continue
            msg = Message("tool")
            msg.add(Kind.OBSERVATION, text_of(e.get("content"), where))
        elif e.get("action") in _SKIP_ACTIONS:
            continue
        elif e.get("action") == "system":
            msg = Message("system")
            msg.add(Kind.SYSTEM, text_of((e.get("args") or {}).get("content"), where))
        elif src == "user":
            args = e.get("args") if isinstance(e.get("args"), dict) else {}
            msg = Message("user")
            msg.add(Kind.USER, text_of(args.get("content", e.get("message")), where))
        elif src == "agent":
            msg = _agent_action(e, where)
            agent_actions += any(isinstance(p, ToolCall) for p in msg.parts)
            if not msg.parts:
                continue
        else:
            continue   # environment actions: the scaffold's, not the agent's
        traj.messages.append(msg)
    if not agent_actions:
        raise ReadError("OpenHands event stream without any agent action")
    return traj
