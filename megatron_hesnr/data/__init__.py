"""Trajectory preparation: agent trajectories -> token ids + per-token scoring mask.

Pipeline (one module per step): ``readers`` (files -> :class:`Trajectory`; ``row_select``
decides which dataset rows are kept: ``--only-resolved``, ``--where``, ``--limit``, ``--sample``),
``render`` (text + character spans per kind, through a template), ``filters``
(characters of actions that are not scored), ``tokenize_mask`` (offsets -> per-token
category mask), ``writer`` / ``dataset`` (Megatron indexed files + manifest, through
``mmap_indexed``: numpy only, no megatron-core or torch).
"""
from .filters import FilterConfig
from .segments import Category, Kind, Message, Segment, ToolCall, Trajectory

__all__ = ["Category", "FilterConfig", "Kind", "Message", "PreparedDataset", "Segment", "ToolCall", "Trajectory"]


def __getattr__(name):
    if name == "PreparedDataset":
        from .dataset import PreparedDataset
        return PreparedDataset
    raise AttributeError(name)
