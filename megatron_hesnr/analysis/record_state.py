"""A record's accumulator state as numpy arrays: validated and queried without torch.

``hesnr report`` and ``hesnr compare`` read thousands of saved states
(``HESNRAccumulator.state_dict()`` in JSON).  :func:`parse_state` checks one with the
rules of :mod:`megatron_hesnr.metric.state_layout` (the accumulator's loader applies the
same ones) and keeps it as float64 arrays; :class:`RecordState` answers the same
questions as the accumulator (``sums``, ``histogram``, ``sweep``, ``uncertainty``,
``trajectory_rows``) from them.  The per-trajectory table is kept only for the
categories that have tokens, one ``[num_documents, fields]`` array each, built
from the JSON lists after their length was checked against ``num_documents``:
nothing is allocated from a size the record merely claims.
"""
from __future__ import annotations

import numpy as np

from ..metric import state_layout
from ..metric.ratios import metrics_from_sums, sweep_histogram
from ..metric.state_layout import BIN_INDEX as _B
from ..metric.state_layout import SCALAR_INDEX as _F
from ..metric.state_layout import SCALAR_FIELDS, AccumulatorConfig, StateError
from ..metric.stderr import stderr_metrics

__all__ = ["RecordState", "StateError", "parse_state"]

#: Bin edges shared by the records that have them (a report of a million records holds one
#: array per distinct (k, num_bins), not one per record); read-only by flag.
_EDGES: dict[tuple, np.ndarray] = {}


def _edges_of(config: AccumulatorConfig) -> np.ndarray:
    key = (config.k, config.num_bins)
    edges = _EDGES.get(key)
    if edges is None:
        edges = config.bin_edges_np()
        edges.flags.writeable = False
        if len(_EDGES) < 4096:
            _EDGES[key] = edges
    return edges


class RecordState:
    """A validated state: config, ``scalars [C, F]``, ``hist [C, bins, BF]`` and the
    per-trajectory rows of the categories that have tokens."""

    def __init__(self, config: AccumulatorConfig, scalars: np.ndarray, hist: np.ndarray, reduced: bool,
                 table: dict[int, np.ndarray] | None):
        self.config, self.scalars, self.hist, self.reduced = config, scalars, hist, reduced
        self.table = table
        self._edges = _edges_of(config)

    def _index(self, category):
        names = self.config.category_names
        if category is None or category == "all":
            return None
        if isinstance(category, str):
            if category not in names:
                raise KeyError(f"unknown category {category!r}; known: {names}")
            return names.index(category)
        if not 1 <= category <= len(names):
            raise KeyError(f"category id {category} outside 1..{len(names)}")
        return category - 1

    def _select(self, table: np.ndarray, category) -> np.ndarray:
        c = self._index(category)
        return table.sum(axis=0) if c is None else table[c]

    def sums(self, category=None) -> dict:
        row = self._select(self.scalars, category)
        return {name: float(row[i]) for name, i in _F.items()}

    def histogram(self, category=None) -> dict:
        hist = self._select(self.hist, category)
        out = {"edges": self._edges.tolist()}
        out.update({name: hist[:, i].tolist() for name, i in _B.items()})
        return out

    def sweep(self, thresholds, category=None) -> list[dict]:
        return sweep_histogram(self._select(self.hist, category), self._edges, self.sums(category), self.config,
                               thresholds)

    def trajectory_rows(self, category=None) -> np.ndarray | None:
        """``[num_documents, fields]`` of one category (or summed over all); ``None`` when
        trajectories are not tracked or the category has no scored trajectory."""
        if self.table is None:
            return None
        c = self._index(category)
        if c is not None:
            return self.table.get(c)
        blocks = [self.table[i] for i in sorted(self.table)]
        if not blocks:
            return None
        total = blocks[0].copy()
        for b in blocks[1:]:
            total += b
        return total

    def uncertainty(self, category=None) -> dict:
        if self.table is None:
            return {"num_documents": None}
        rows = self.trajectory_rows(category)
        if rows is None:
            rows = np.zeros((0, len(SCALAR_FIELDS)))
        rows = rows[(rows[:, _F["num_tokens"]] + rows[:, _F["num_invalid"]]) > 0]
        return {"num_documents": int(rows.shape[0]), **stderr_metrics(rows, SCALAR_FIELDS)}

    def hesnr(self) -> float:
        return metrics_from_sums(self.sums())["hesnr"]

    def to_accumulator(self):
        """The same state as a :class:`~megatron_hesnr.HESNRAccumulator` (imports torch)."""
        import torch

        from ..metric.accumulator import HESNRAccumulator

        acc = HESNRAccumulator(self.config)
        acc.scalars.copy_(torch.from_numpy(self.scalars))
        acc.hist.copy_(torch.from_numpy(self.hist))
        for c, rows in (self.table or {}).items():
            acc.trajectories[:, c, :] = torch.from_numpy(rows)
        acc._reduced = self.reduced
        return acc


def parse_state(d) -> RecordState:
    """Validate a saved ``HESNRAccumulator.state_dict()``; raise :class:`StateError`."""
    return RecordState(*state_layout.parse_state(d))
