"""Character filters inside actions: which characters of an action are *not* scored.

Each filter is switchable (``FilterConfig``) so the paper's ablation can be rerun:

- ``markup``: tool-call markup (fences, ``<command>``/XML function tags, JSON wrappers)
  is not scored. The readers/renderer label markup; this switch only decides whether
  those labels count. Off: markup is scored like action content.
- ``comments``: code comments are not scored.
  * Python (``python`` and ``auto`` content, SWE-agent edit bodies, heredocs): comments
    are found exactly with the :mod:`tokenize` module. If tokenizing fails only because
    brackets are still open at the end (a partial snippet), the comments found are
    still exact. On any other failure (unterminated string, bad indentation, too
    large) the safe fallback drops only whole-line ``#`` comments, and nothing at all
    if the text contains triple quotes (a ``#`` line may then be inside a string).
  * Shell (``shell`` content): ``#`` starting a word, outside quotes, to the end of the
    line; heredoc bodies and SWE-agent ``edit``/``end_of_edit`` bodies are treated as
    the code they contain (language from the target file's suffix, else Python tried).
  * The spaces before an inline comment, and the whole line of a whole-line comment
    (indentation and newline), go with the comment: they exist only because of it.
- ``whitespace``: whitespace characters in actions are not scored. A token made only of
  whitespace is then never scored; a token such as ``" foo"`` is still scored through
  ``foo`` (see the straddle rule in :mod:`.tokenize_mask`).

All functions return sorted, possibly overlapping ``(start, end)`` character ranges
relative to the text they are given. Nothing here executes the code it looks at.
"""
from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass

FILTER_NAMES = ("markup", "comments", "whitespace")
#: Larger code regions skip ``tokenize`` (pure Python, slow) and use the safe fallback.
MAX_TOKENIZE_CHARS = 1_000_000

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class FilterConfig:
    markup: bool = True
    comments: bool = True
    whitespace: bool = True

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in FILTER_NAMES}


# ---------------------------------------------------------------- Python

def _line_starts(text: str) -> list[int]:
    starts = [0]
    for m in re.finditer("\n", text):
        starts.append(m.end())
    return starts


def python_comments(text: str) -> Ranges | None:
    """Exact comment ranges via :mod:`tokenize`, or None when tokenizing is not reliable."""
    if len(text) > MAX_TOKENIZE_CHARS:
        return None
    starts = _line_starts(text)
    found: Ranges = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                found.append((starts[tok.start[0] - 1] + tok.start[1], starts[tok.end[0] - 1] + tok.end[1]))
    except tokenize.TokenError as exc:
        # Open brackets at the end do not change how comments were lexed; an
        # unterminated (multi-line) string does.
        if "multi-line statement" not in str(exc.args[0] if exc.args else exc):
            return None
    except (SyntaxError, ValueError, RecursionError, MemoryError, IndexError):
        return None
    return found


def _fallback_comments(text: str) -> Ranges:
    if '"""' in text or "'''" in text:
        return []
    return [(m.start(1), m.end(1)) for m in re.finditer(r"(?m)^[ \t]*(#[^\n]*)", text)]


def code_comments(text: str, lang: str) -> Ranges:
    if lang == "shell":
        return shell_comments(text)
    if lang in ("python", "auto"):
        found = python_comments(text)
        return _fallback_comments(text) if found is None else found
    return []


# ---------------------------------------------------------------- shell

_HEREDOC_RE = re.compile(r"<<(-?)[ \t]*(['\"]?)([A-Za-z0-9_.\-]+)\2")
_REDIRECT_RE = re.compile(r"(?:>>?|\btee(?:\s+-a)?)\s*['\"]?([^\s'\";&|]+)")
_BLOCK_CMD_RE = re.compile(r"[ \t]*(\w+)[^\n]*\n")   # SWE-agent: edit 1:2 ... end_of_edit
_SUFFIX_LANG = {".py": "python", ".pyi": "python", ".sh": "shell", ".bash": "shell"}
_WORD_BREAK = set(" \t\n;&|()")  # not "{": ${#var} is no comment


def _lang_for_target(line: str) -> str:
    if re.search(r"\bpython[0-9.]*\b", line):
        return "python"
    m = _REDIRECT_RE.search(line)
    if m:
        dot = m.group(1).rfind(".")
        suffix = m.group(1)[dot:].lower() if dot > 0 else ""
        return _SUFFIX_LANG.get(suffix, "text" if suffix else "auto")
    return "auto"


def _embedded(text: str, start: int, end: int, lang: str, out: Ranges) -> None:
    out.extend((start + s, start + e) for s, e in code_comments(text[start:end], lang))


def shell_comments(text: str) -> Ranges:
    out: Ranges = []
    pos = 0
    m = _BLOCK_CMD_RE.match(text)
    if m:
        end_re = re.compile(r"(?m)^[ \t]*end_of_" + re.escape(m.group(1)) + r"[ \t]*$")
        e = end_re.search(text, m.end())
        if e:
            _embedded(text, m.end(), e.start(), "auto", out)
            _shell_lex(text[:m.end()], 0, out)
            pos = e.end()
    _shell_lex(text[pos:], pos, out)
    return sorted(out)


def _shell_lex(text: str, base: int, out: Ranges) -> None:
    i, n = 0, len(text)
    word_start = True
    pending: list[tuple[str, bool, str]] = []   # heredocs opened on the current line
    line_start = 0
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            word_start = False
            continue
        if c == "'":
            j = text.find("'", i + 1)
            i = n if j < 0 else j + 1
            word_start = False
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            word_start = False
            continue
        if c == "#" and word_start:
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append((base + i, base + j))
            i = j
            continue
        if c == "<" and text.startswith("<<", i) and not text.startswith("<<<", i):
            m = _HEREDOC_RE.match(text, i)
            if m:
                eol = text.find("\n", i)
                line = text[line_start:n if eol < 0 else eol]
                pending.append((m.group(3), m.group(1) == "-", _lang_for_target(line)))
                i = m.end()
                word_start = False
                continue
        if c == "\n":
            i += 1
            for delim, strip_tabs, lang in pending:
                end_re = re.compile(r"(?m)^" + ("\t*" if strip_tabs else "") + re.escape(delim) + r"[ \t]*$")
                e = end_re.search(text, i)
                stop = e.start() if e else n
                out.extend((base + i + s, base + i + t) for s, t in code_comments(text[i:stop], lang))
                i = e.end() if e else n
            pending = []
            line_start = i
            word_start = True
            continue
        word_start = c in _WORD_BREAK
        i += 1


# ---------------------------------------------------------------- ranges

def _with_padding(text: str, ranges: Ranges) -> Ranges:
    """Extend each comment over the blanks before it; a whole-line comment takes its line."""
    out = []
    for s, e in ranges:
        while s > 0 and text[s - 1] in " \t":
            s -= 1
        if s == 0 or text[s - 1] == "\n":
            if text.startswith("\r\n", e):
                e += 2
            elif text.startswith("\n", e):
                e += 1
        out.append((s, e))
    return out


_WS_RE = re.compile(r"\s+")


def whitespace_ranges(text: str) -> Ranges:
    return [m.span() for m in _WS_RE.finditer(text)]


def action_drop_ranges(text: str, lang: str, cfg: FilterConfig) -> Ranges:
    """Characters of one action-content piece that are not scored under ``cfg``."""
    out: Ranges = []
    if cfg.comments:
        out.extend(_with_padding(text, code_comments(text, lang)))
    if cfg.whitespace:
        out.extend(whitespace_ranges(text))
    return out
