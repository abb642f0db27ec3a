"""Split an assistant message written as free text into thought and action.

Scaffolds that do not use native function calling put the action inside the text:
SWE-agent "default" (a fenced block), SWE-agent "xml" (``<command>...</command>``),
mini-swe-agent (a ```` ```bash ```` / ```` ```mswea_bash_command ```` block) and
OpenHands-style prompts (``<function=NAME><parameter=P>...</parameter></function>``).
The text is kept exactly as written (it is what the model produced); only its
pieces are labelled: thought, action markup (fences, tags) and action content.
"""
from __future__ import annotations

import re

from ..segments import Kind, Message

# Fence languages that mean "this block is the command to run".
_SHELL_FENCES = r"(?:bash|sh|shell|console|zsh|mswea_bash_command)?"
_FENCE_RE = re.compile(r"(```" + _SHELL_FENCES + r"[ \t]*\r?\n)(.*?)(\r?\n[ \t]*```)", re.S)
_COMMAND_RE = re.compile(r"(<command>[ \t]*\r?\n?)(.*?)(\r?\n?</command>)", re.S)
_FUNCTION_RE = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAM_RE = re.compile(r"(<parameter=[^>\n]+>)(.*?)(</parameter>)", re.S)
# Markup right before / after an action found by its recorded text (SWE-agent).
_OPENER_RE = re.compile(r"(```[\w+-]*[ \t]*\r?\n|<command>[ \t]*\r?\n?)$")
_CLOSER_RE = re.compile(r"^(\r?\n?[ \t]*```|\r?\n?</command>)")


def _function_calls(msg: Message, text: str) -> bool:
    matches = list(_FUNCTION_RE.finditer(text))
    if not matches:
        return False
    pos = 0
    for m in matches:
        msg.add(Kind.THOUGHT, text[pos:m.start()])
        name_start, name_end = m.span(1)
        # The function name is the agent's choice of tool: content; the tag is markup.
        msg.add(Kind.ACTION_MARKUP, text[m.start():name_start])
        msg.add(Kind.ACTION_CONTENT, text[name_start:name_end], "text")
        msg.add(Kind.ACTION_MARKUP, text[name_end:name_end + 1])
        body_start, body_end = m.span(2)
        p = body_start
        for pm in _PARAM_RE.finditer(text, body_start, body_end):
            msg.add(Kind.ACTION_MARKUP, text[p:pm.end(1)])
            value = text[pm.start(2):pm.end(2)]
            name = pm.group(1)[len("<parameter="):-1]
            msg.add(Kind.ACTION_CONTENT, value, "shell" if name in ("command", "cmd") else "auto",
                    starts_action=False)
            p = pm.start(3)
        msg.add(Kind.ACTION_MARKUP, text[p:m.end()])
        pos = m.end()
    msg.add(Kind.THOUGHT, text[pos:])
    return True


def _block(msg: Message, text: str, m: re.Match) -> None:
    msg.add(Kind.THOUGHT, text[:m.start()])
    msg.add(Kind.ACTION_MARKUP, m.group(1))
    msg.add(Kind.ACTION_CONTENT, m.group(2), "shell")
    msg.add(Kind.ACTION_MARKUP, m.group(3))
    msg.add(Kind.THOUGHT, text[m.end():])


def split_text_action(text: str, action_hint: str | None = None) -> Message:
    """Assistant text -> a message of thought / action markup / action content parts.

    ``action_hint`` is the action the scaffold recorded separately (SWE-agent's
    ``action`` field); when it occurs in the text, that occurrence (the last one) is
    the action, and a fence or ``<command>`` tag right around it is markup.
    """
    msg = Message("assistant")
    hint = (action_hint or "").strip()
    if hint:
        start = text.rfind(hint)
        if start >= 0:
            end = start + len(hint)
            opener = _OPENER_RE.search(text, 0, start)
            o = opener.start() if opener else start
            closer = _CLOSER_RE.match(text[end:])
            c = end + (closer.end() if closer else 0)
            msg.add(Kind.THOUGHT, text[:o])
            msg.add(Kind.ACTION_MARKUP, text[o:start])
            msg.add(Kind.ACTION_CONTENT, hint, "shell")
            msg.add(Kind.ACTION_MARKUP, text[end:c])
            msg.add(Kind.THOUGHT, text[c:])
            return msg
    if _function_calls(msg, text):
        return msg
    for regex in (_COMMAND_RE, _FENCE_RE):
        matches = list(regex.finditer(text))
        if matches:
            _block(msg, text, matches[-1])   # the last block is the one that gets run
            return msg
    if hint:
        # The recorded action is not in the text (edited by the scaffold): keep the text
        # as thought and show the action in a fence, as SWE-agent's default format does.
        msg.add(Kind.THOUGHT, text)
        msg.add(Kind.ACTION_MARKUP, "\n```\n")
        msg.add(Kind.ACTION_CONTENT, hint, "shell")
        msg.add(Kind.ACTION_MARKUP, "\n```")
        return msg
    msg.add(Kind.THOUGHT, text)
    return msg
