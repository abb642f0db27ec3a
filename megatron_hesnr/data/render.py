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
keys, quotes and braces are action markup. Wherever a value is written as JSON (every
argument in ``json`` style; non-string values such as lists in both styles), it appears
JSON-escaped: the characters of an escape (``\\n``, ``\\t``, ``\\u0001``, the backslash of
``\\"`` and ``\\\\``) are markup, so a token such as ``necho`` (the ``n`` of ``\\n``
followed by ``echo``) is never scored; filters still work on the raw value through an
index map.
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
    #: ``(start, end)`` ranges relative to ``start``: escape characters inside the
    #: rendered value, markup although they sit inside action content.
    escapes: list | None = None


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


def json_escape_map(raw: str) -> tuple[str, np.ndarray, list]:
    """JSON string body of ``raw`` (no quotes), where each raw character starts in it,
    and the escape ranges: the characters that only exist because of JSON escaping
    (all of ``\\n`` / ``\\u0001``; the backslash of ``\\"`` and ``\\\\``)."""
    body = json.dumps(raw, ensure_ascii=False)[1:-1]
    index_map = np.zeros(len(raw) + 1, dtype=np.int64)
    if len(body) == len(raw):   # nothing escaped: the common case, no per-character work
        index_map[1:] = np.arange(1, len(raw) + 1)
        return body, index_map, []
    pieces = [json.dumps(ch, ensure_ascii=False)[1:-1] for ch in raw]
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    np.cumsum(lengths, out=index_map[1:])
    escapes = []
    for i, (ch, piece) in enumerate(zip(raw, pieces)):
        if len(piece) > 1:
            at = int(index_map[i])
            # \" and \\ end with the character itself: only the backslash is markup.
            escapes.append((at, at + (1 if piece[-1] == ch else len(piece))))
    return body, index_map, escapes


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


def _json_value(b: _Builder, value, action: int, lang: str = "text") -> None:
    """A JSON value: strings' characters and scalars are content; quotes, brackets,
    commas, object keys and escapes are markup."""
    if isinstance(value, str):
        body, imap, escapes = json_escape_map(value)
        b.add('"', Kind.ACTION_MARKUP)
        b.add(body, Kind.ACTION_CONTENT, lang=lang, action=action, raw=value, index_map=imap, escapes=escapes)
        b.add('"', Kind.ACTION_MARKUP)
    elif isinstance(value, dict):
        b.add("{", Kind.ACTION_MARKUP)
        for i, (key, item) in enumerate(value.items()):
            b.add((", " if i else "") + json.dumps(str(key), ensure_ascii=False) + ": ", Kind.ACTION_MARKUP)
            _json_value(b, item, action)
        b.add("}", Kind.ACTION_MARKUP)
    elif isinstance(value, (list, tuple)):
        b.add("[", Kind.ACTION_MARKUP)
        for i, item in enumerate(value):
            if i:
                b.add(", ", Kind.ACTION_MARKUP)
            _json_value(b, item, action)
        b.add("]", Kind.ACTION_MARKUP)
    else:
        b.add(json.dumps(value, ensure_ascii=False), Kind.ACTION_CONTENT, action=action)


def _xml_call(b: _Builder, call: ToolCall, action: int) -> None:
    b.add("<function=", Kind.ACTION_MARKUP)
    b.add(call.name, Kind.ACTION_CONTENT, action=action)
    b.add(">\n", Kind.ACTION_MARKUP)
    if call.raw_arguments is not None:
        b.add(call.raw_arguments, Kind.ACTION_CONTENT, lang="auto", action=action)
        b.add("\n", Kind.ACTION_MARKUP)
    for key, value in call.arguments.items():
        b.add(f"<parameter={key}>\n", Kind.ACTION_MARKUP)
        if isinstance(value, str):
            b.add(value, Kind.ACTION_CONTENT, lang=argument_language(key, call.arguments), action=action)
        else:
            _json_value(b, value, action)
        b.add("\n</parameter>\n", Kind.ACTION_MARKUP)
    b.add("</function>", Kind.ACTION_MARKUP)


def _json_call(b: _Builder, call: ToolCall, action: int) -> None:
    b.add('{"name": ', Kind.ACTION_MARKUP)
    _json_value(b, call.name, action)
    if call.raw_arguments is not None:
        b.add(', "arguments": ', Kind.ACTION_MARKUP)
        try:   # JSON that is not an object (a list, a string): written as JSON, escapes as markup
            _json_value(b, json.loads(call.raw_arguments), action)
        except (ValueError, RecursionError):   # not JSON at all (e.g. cut off): verbatim
            b.add(call.raw_arguments, Kind.ACTION_CONTENT, lang="auto", action=action)
        b.add("}", Kind.ACTION_MARKUP)
        return
    b.add(', "arguments": {', Kind.ACTION_MARKUP)
    for i, (key, value) in enumerate(call.arguments.items()):
        b.add((", " if i else "") + json.dumps(str(key), ensure_ascii=False) + ": ", Kind.ACTION_MARKUP)
        _json_value(b, value, action, argument_language(key, call.arguments) if isinstance(value, str) else "text")
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
