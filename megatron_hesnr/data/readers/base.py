"""Safe loading shared by the readers: bytes -> text -> JSON, with errors that say why.

Trajectory files are data: they are parsed with :mod:`json` only, never executed,
imported or unpickled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

#: Refuse single JSON documents / JSONL lines larger than this (bytes) by default.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class ReadError(ValueError):
    """A file (or one JSONL line) that cannot be turned into a trajectory."""


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 4 * DEFAULT_MAX_BYTES   # whole .traj / .traj.json file
    max_line_bytes: int = DEFAULT_MAX_BYTES       # one JSONL line


def decode_utf8(data: bytes, where: str = "") -> str:
    if not data.strip():
        raise ReadError(f"empty{' ' + where if where else ''}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadError(f"not UTF-8{' ' + where if where else ''}: byte 0x{data[exc.start]:02x} "
                        f"at offset {exc.start}") from None


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def parse_json(text: str, where: str = ""):
    """``json.loads`` with the reason spelled out (cut short, malformed, too deep, a number
    too long for Python's integer conversion limit)."""
    at = f" {where}" if where else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        end_line, end_col = _line_col(text, len(text.rstrip()))
        # An unterminated string is one that runs to the end of the input.
        unterminated = exc.msg.startswith("Unterminated string")
        if unterminated or exc.pos >= len(text.rstrip()):
            inside = (f"inside a string that starts at line {exc.lineno} column {exc.colno}" if unterminated
                      else f"while {exc.msg[0].lower() + exc.msg[1:]}")
            raise ReadError(f"truncated JSON{at} (cut short?): the input ends at line {end_line} column "
                            f"{end_col} {inside}") from None
        raise ReadError(f"malformed JSON{at}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ReadError(f"JSON nested too deeply{at}") from None
    except ValueError as exc:   # e.g. an integer beyond sys.get_int_max_str_digits()
        raise ReadError(f"unreadable JSON{at}: {exc}") from None


def read_json_file(path: str, limits: Limits) -> object:
    with open(path, "rb") as f:
        data = f.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise ReadError(f"file larger than {limits.max_file_bytes} bytes (raise --max-file-bytes)")
    return parse_json(decode_utf8(data, "file"))


def text_of(content, where: str) -> str:
    """Message content as text: a string, None, or a list of OpenAI-style parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, dict) and part.get("type") not in (None, "text"):
                continue  # images and other non-text parts carry no text to score
            else:
                raise ReadError(f"{where}: content part {i} has no text")
        return "".join(out)
    raise ReadError(f"{where}: content must be a string, a list of parts or null, "
                    f"not {type(content).__name__}")
