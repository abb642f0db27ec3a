"""Trajectory -> evaluation text, with the character span of every piece by kind.

The text must look like what the model was trained on, so the layout is a selectable
:class:`Template`:

- ``chatml``: ``<|im_start|>ROLE\\n ... <|im_end|>\\n`` around every message;
- ``plain``: message texts separated by a blank line, no role markers.

Structured tool calls are written in one of two documented styles:

- ``xml`` (SWE-agent / Qwen-Coder function tags)::

      <function=NAME>
      <parameter=KEY>
      VALUE
      </parameter>
      </function>

- ``json`` (one object per call): ``{"name": "NAME", "arguments": {"KEY": VALUE}}``.

In both, the function name and the argument *values* are action content; tags,
keys, quotes and braces are action markup. In ``json`` the values appear
JSON-escaped; filters still work on the raw value through an index map.
Text a scaffold stored verbatim (fenced commands, ``<command>`` tags) is rendered as
written, with the readers' labels.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .segments import Kind, ToolCall, Trajectory

TOOL_STYLES = ("xml", "json")


@dataclass(frozen=True)
class Template:
    name: str
    header: str        # before each message; ``{role}`` is replaced
    footer: str        # after each message
    call_separator: str = "\n"   # between the thought / previous call and a tool call


TEMPLATES = {
    "chatml": Template("chatml", "<|im_start|>{role}\n", "<|im_end|>\n"),
    "plain": Template("plain", "", "\n\n"),
}


@dataclass
class Span:
    """``text[start:end]`` is of ``kind``. Action content also carries its language, the
    index of the action in the trajectory and, when the rendered text is an escaped form
    of the agent's value (JSON style), ``raw`` and ``index_map``: character ``i`` of
    ``raw`` starts at ``start + index_map[i]`` (``index_map`` has ``len(raw) + 1`` entries)."""

    start: int
    end: int
    kind: Kind
    lang: str = "text"
    action: int = -1
    raw: str | None = None
    index_map: np.ndarray | None = None


@dataclass
class Rendered:
    text: str
    spans: list[Span]
    num_actions: int
    source: str = ""


_SHELL_ARGS = {"command", "cmd", "script", "bash_command", "shell_command"}
_CODE_ARGS = {"file_text", "new_str", "old_str", "replacement_text", "content", "code", "insert_text",
              "new_content", "search", "replace", "text", "source"}
_PATH_ARGS = ("path", "file_path", "filename", "file_name", "file")
_EXT_LANG = {".py": "python", ".pyi": "python", ".sh": "shell", ".bash": "shell"}


def argument_language(key: str, args: dict) -> str:
    """Language hint for a tool-call argument value (selects the comment filter)."""
    if key in _SHELL_ARGS:
        return "shell"
    if key not in _CODE_ARGS:
        return "text"
    for p in _PATH_ARGS:
        if isinstance(args.get(p), str) and args[p]:
            ext = os.path.splitext(args[p])[1].lower()
            return _EXT_LANG.get(ext, "text" if ext else "auto")
    return "auto"


def json_escape_map(raw: str) -> tuple[str, np.ndarray]:
    """JSON string body of ``raw`` (no quotes) and where each raw character starts in it."""
    pieces = [json.dumps(ch, ensure_ascii=False)[1:-1] for ch in raw] if raw else []
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    index_map = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(lengths, out=index_map[1:])
    return "".join(pieces), index_map


class _Builder:
    def __init__(self):
        self.chunks: list[str] = []
        self.spans: list[Span] = []
        self.pos = 0

    def add(self, text: str, kind: Kind, **extra) -> None:
        if not text:
            return
        self.chunks.append(text)
        self.spans.append(Span(self.pos, self.pos + len(text), kind, **extra))
        self.pos += len(text)


def _xml_call(b: _Builder, call: ToolCall, action: int) -> None:
    b.add("<function=", Kind.ACTION_MARKUP)
    b.add(call.name, Kind.ACTION_CONTENT, action=action)
    b.add(">\n", Kind.ACTION_MARKUP)
    if call.raw_arguments is not None:
        b.add(call.raw_arguments, Kind.ACTION_CONTENT, lang="auto", action=action)
        b.add("\n", Kind.ACTION_MARKUP)
    for key, value in call.arguments.items():
        b.add(f"<parameter={key}>\n", Kind.ACTION_MARKUP)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lang = argument_language(key, call.arguments) if isinstance(value, str) else "text"
        b.add(text, Kind.ACTION_CONTENT, lang=lang, action=action)
        b.add("\n</parameter>\n", Kind.ACTION_MARKUP)
    b.add("</function>", Kind.ACTION_MARKUP)


def _json_call(b: _Builder, call: ToolCall, action: int) -> None:
    b.add('{"name": "', Kind.ACTION_MARKUP)
    name, name_map = json_escape_map(call.name)
    b.add(name, Kind.ACTION_CONTENT, action=action, raw=call.name, index_map=name_map)
    if call.raw_arguments is not None:
        b.add('", "arguments": ', Kind.ACTION_MARKUP)
        b.add(call.raw_arguments, Kind.ACTION_CONTENT, lang="auto", action=action)
        b.add("}", Kind.ACTION_MARKUP)
        return
    b.add('", "arguments": {', Kind.ACTION_MARKUP)
    for i, (key, value) in enumerate(call.arguments.items()):
        b.add((", " if i else "") + json.dumps(str(key), ensure_ascii=False) + ": ", Kind.ACTION_MARKUP)
        if isinstance(value, str):
            body, imap = json_escape_map(value)
            b.add('"', Kind.ACTION_MARKUP)
            b.add(body, Kind.ACTION_CONTENT, lang=argument_language(key, call.arguments), action=action,
                  raw=value, index_map=imap)
            b.add('"', Kind.ACTION_MARKUP)
        else:
            b.add(json.dumps(value, ensure_ascii=False), Kind.ACTION_CONTENT, action=action)
    b.add("}}", Kind.ACTION_MARKUP)


def render(traj: Trajectory, template: str | Template = "chatml", tool_style: str = "xml") -> Rendered:
    tpl = TEMPLATES[template] if isinstance(template, str) else template
    if tool_style not in TOOL_STYLES:
        raise ValueError(f"unknown tool-call style {tool_style!r} (expected one of {TOOL_STYLES})")
    write_call = _xml_call if tool_style == "xml" else _json_call
    b = _Builder()
    action = 0
    for msg in traj.messages:
        b.add(tpl.header.format(role=msg.role), Kind.TEMPLATE)
        started = False
        for part in msg.parts:
            if isinstance(part, ToolCall):
                if started:
                    b.add(tpl.call_separator, Kind.TEMPLATE)
                write_call(b, part, action)
                action += 1
            elif part.kind is Kind.ACTION_CONTENT:
                if part.starts_action or action == 0:
                    action += 1
                b.add(part.text, part.kind, lang=part.lang, action=action - 1)
            else:
                b.add(part.text, part.kind)
            started = True
        b.add(tpl.footer, Kind.TEMPLATE)
    return Rendered("".join(b.chunks), b.spans, action, traj.source)
