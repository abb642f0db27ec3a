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


def parse_json(text: str, where: str = ""):
    """``json.loads`` with the reason spelled out (truncated, malformed, too deep)."""
    at = f" {where}" if where else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise ReadError(f"truncated JSON{at}: input ends at line {exc.lineno} column {exc.colno} "
                            f"({exc.msg})") from None
        raise ReadError(f"malformed JSON{at}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ReadError(f"JSON nested too deeply{at}") from None


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
