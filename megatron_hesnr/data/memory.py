"""An evaluation set held in memory: what the pass reads from a prepared set, without files.

Tests and benchmarks feed the evaluation pass synthetic trajectories through it; it has
the surface the pass uses of :class:`~megatron_hesnr.data.dataset.PreparedDataset`
(``len``, ``[i]`` -> ``(tokens, mask)``, ``manifest``).
"""
from __future__ import annotations


class MemoryDataset:
    """``PreparedDataset`` stand-in: items ``(tokens int64 [L], mask uint8 [L])`` + manifest."""

    def __init__(self, items, vocab_size: int, manifest=None):
        self.items = items
        self.manifest = {"tokenizer": {"vocab_size": vocab_size}} if manifest is None else manifest

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]
