"""What a trajectory is made of, independent of the scaffold that wrote it.

Readers turn every supported file format into :class:`Trajectory` objects: ordered
messages whose parts are :class:`Segment` (text of one kind) or :class:`ToolCall`
(a structured call that the template renders, as XML function tags or JSON).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union


class Kind(str, enum.Enum):
    """Kind of a piece of trajectory text; decides whether it can be scored."""

    SYSTEM = "system"
    USER = "user"
    OBSERVATION = "observation"
    THOUGHT = "thought"
    ACTION_MARKUP = "action_markup"    # fences, XML tags, JSON wrappers around an action
    ACTION_CONTENT = "action_content"  # what the agent actually wrote as its action
    TEMPLATE = "template"              # role headers / separators added by the renderer


class Category(enum.IntEnum):
    """Values of the per-token mask (the contract with the metric's accumulator)."""

    NOT_SCORED = 0
    ACTION = 1
    THOUGHT = 2
    OBSERVATION = 3


#: Language hints for action content; they select the comment filter.
#: ``shell``: a shell command line (may embed SWE-agent edit bodies or heredocs);
#: ``python``; ``auto``: code of unknown language (Python tried, safe fallback);
#: ``text``: no comments to remove (paths, numbers, prose arguments).
LANGS = ("shell", "python", "auto", "text")


@dataclass(frozen=True)
class Segment:
    kind: Kind
    text: str
    lang: str = "text"   # only meaningful for ACTION_CONTENT
    #: ACTION_CONTENT only: False when this piece continues the previous action
    #: (e.g. the parameter values of an XML function call written as text).
    starts_action: bool = True

    def __post_init__(self):
        if self.lang not in LANGS:
            raise ValueError(f"unknown segment language {self.lang!r} (expected one of {LANGS})")


@dataclass(frozen=True)
class ToolCall:
    """A function call emitted by the agent; ``arguments`` keeps the call's key order.

    ``raw_arguments`` is set (and ``arguments`` empty) when the recorded arguments
    were not a JSON object: they are then rendered verbatim as one content piece.
    """

    name: str
    arguments: dict = field(default_factory=dict)
    raw_arguments: str | None = None


Part = Union[Segment, ToolCall]


@dataclass
class Message:
    role: str                       # system / user / assistant / tool
    parts: list[Part] = field(default_factory=list)

    def add(self, kind: Kind, text: str, lang: str = "text", starts_action: bool = True) -> None:
        if text:
            self.parts.append(Segment(kind, text, lang, starts_action))


@dataclass
class Trajectory:
    """One agent run: one document of the prepared dataset."""

    source: str          # file path (plus ``:LINE`` for JSONL)
    format: str          # reader that produced it, e.g. ``swe-agent``
    messages: list[Message] = field(default_factory=list)

    @property
    def num_actions(self) -> int:
        """Assistant messages with at least one action (tool call or action content)."""
        n = 0
        for m in self.messages:
            if m.role == "assistant":
                n += sum(1 for p in m.parts
                         if isinstance(p, ToolCall) or (p.kind is Kind.ACTION_CONTENT and p.starts_action))
        return n
