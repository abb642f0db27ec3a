"""Action filters, the straddle rule and the renderer's spans (no tokenizer files needed)."""
from __future__ import annotations

import json

import numpy as np

from megatron_hesnr.data.filters import FilterConfig, action_drop_ranges, code_comments, shell_comments
from megatron_hesnr.data.readers.text_actions import split_text_action
from megatron_hesnr.data.render import json_escape_map, render
from megatron_hesnr.data.segments import Kind, Message, ToolCall, Trajectory
from megatron_hesnr.data.tokenize_mask import char_categories, token_mask


def kept_text(text, lang, **kw):
    keep = np.ones(len(text), dtype=bool)
    for s, e in action_drop_ranges(text, lang, FilterConfig(**{"whitespace": False, **kw})):
        keep[s:e] = False
    return "".join(c for c, k in zip(text, keep) if k)


def test_python_comments_exact_and_strings_kept():
    code = "x = 1  # set x\n# whole line\ns = '# not a comment'\nt = \"\"\"\n# in a docstring\n\"\"\"\n"
    assert kept_text(code, "python") == "x = 1\ns = '# not a comment'\nt = \"\"\"\n# in a docstring\n\"\"\"\n"


def test_python_partial_snippet_and_safe_fallback():
    # Open bracket at the end: tokenize still lexed the comments exactly.
    assert kept_text("foo(\n    1,  # first\n", "auto") == "foo(\n    1,\n"
    # Unterminated triple-quoted string: nothing is removed (a '#' line may be text).
    assert code_comments('s = """\n# maybe text\n', "python") == []
    # Bad dedent: fallback removes whole-line comments only.
    code = "        x = 1\n    # note\n  y = 2  # tail\n"
    assert kept_text(code, "python") == "        x = 1\n  y = 2  # tail\n"


def test_shell_comments_quotes_heredoc_and_swe_agent_edit():
    cmd = "ls -la # list\necho '#x' \"a#b\" $# ${#v} # c\ncat > f.py << 'EOF'\nimport os  # imp\n# full\nEOF\necho done"
    assert kept_text(cmd, "shell") == "ls -la\necho '#x' \"a#b\" $# ${#v}\ncat > f.py << 'EOF'\nimport os\nEOF\necho done"
    edit = "edit 3:4\n    return x  # why\nend_of_edit"
    assert kept_text(edit, "shell") == "edit 3:4\n    return x\nend_of_edit"
    assert shell_comments("grep -c '#' a#b") == []


def test_whitespace_filter_and_text_language():
    assert kept_text("a  b\n\tc", "text", whitespace=True) == "abc"
    assert kept_text("path/#x  # y", "text") == "path/#x  # y"


def test_token_mask_straddle_rule():
    #          0123456789
    text = "<t>ab # c</t>"
    cat = np.zeros(len(text), np.uint8)
    cat[3:9] = 1                      # "ab # c" is action content, tags are markup
    kept = np.ones(len(text), bool)
    kept[5:9] = False                 # " # c" dropped (comment with its padding)
    offsets = np.array([[0, 3], [2, 4], [3, 5], [5, 7], [7, 9], [9, 13], [0, 0]])
    # "<t>" markup; ">a" straddles markup; "ab" kept; " #" and " c" dropped only; "</t>"; special token.
    assert token_mask(offsets, cat, kept).tolist() == [0, 0, 1, 0, 0, 0, 0]


def test_json_tool_calls_map_filters_through_escaping():
    raw = 'print("hi")  # say\n\tx'
    body, imap, _ = json_escape_map(raw)
    assert body == json.dumps(raw)[1:-1] and len(imap) == len(raw) + 1
    traj = Trajectory("t", "test", [Message("user"), Message("assistant", [
        ToolCall("python", {"code": raw, "path": "a.py"})])])
    traj.messages[0].add(Kind.USER, "go")
    rd = render(traj, "plain", "json")
    assert json.loads(rd.text.split("\n\n")[1]) == {"name": "python", "arguments": {"code": raw, "path": "a.py"}}
    cat, kept, action = char_categories(rd, FilterConfig())
    scored = "".join(c for c, k, v in zip(rd.text, kept, cat) if k and v == 1)
    assert scored == 'python' + 'print("hi")' + "x" + "a.py"   # the backslashes of \" are markup


def test_text_action_splitting_variants():
    m = split_text_action("Think.\n```\nls -la\n```", "ls -la\n")
    assert [(p.kind, p.text) for p in m.parts] == [
        (Kind.THOUGHT, "Think.\n"), (Kind.ACTION_MARKUP, "```\n"), (Kind.ACTION_CONTENT, "ls -la"),
        (Kind.ACTION_MARKUP, "\n```")]
    m = split_text_action("Hm.\n<command>\nsubmit\n</command>")
    assert [p.kind for p in m.parts] == [Kind.THOUGHT, Kind.ACTION_MARKUP, Kind.ACTION_CONTENT, Kind.ACTION_MARKUP]
    m = split_text_action("Run:\n<function=bash>\n<parameter=command>\nls\n</parameter>\n</function>")
    content = [p.text for p in m.parts if p.kind is Kind.ACTION_CONTENT]
    assert content == ["bash", "\nls\n"]
    assert sum(p.starts_action for p in m.parts if p.kind is Kind.ACTION_CONTENT) == 1
    m = split_text_action("Just thinking, ```python\nx\n``` no command.")
    assert [p.kind for p in m.parts] == [Kind.THOUGHT]
