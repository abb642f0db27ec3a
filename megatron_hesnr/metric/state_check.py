"""Checking an accumulator's state in torch: the one place the accumulator asks.

:meth:`HESNRAccumulator.load_state_dict` (a saved state, e.g. a record read by
``hesnr report``), :meth:`HESNRAccumulator.merge` (two live states) and
:meth:`HESNRAccumulator.all_reduce` (the per-rank fingerprint compared before the
sum) call this module.  The rules themselves, and the layout they are about, are
:mod:`.state_layout`'s (torch-free, shared with the numpy record reader): here a saved
state is parsed by it and handed back as float64 tensors, and a live state's tensors
are checked by it.  A state that passes loads and saves back exactly as it was;
anything else raises :class:`StateError` naming the field.
"""
from __future__ import annotations

import hashlib
import struct

import torch

from .state_layout import (SCALAR_FIELDS, STATE_VERSION, AccumulatorConfig, StateError, check_sums,
                           check_trajectory_sums, parse_state)

__all__ = ["StateError", "check_mergeable", "fingerprint", "show_fingerprint", "validate_state_dict"]


def validate_state_dict(d) -> tuple[AccumulatorConfig, torch.Tensor, torch.Tensor, bool, torch.Tensor | None]:
    """Check a saved state completely; -> (config, scalars, hist, reduced, trajectories).

    ``trajectories`` is the per-trajectory table ``[num_documents, categories, fields]``,
    or ``None`` when the state keeps none.
    """
    cfg, scalars, hist, reduced, rows = parse_state(d)
    table = None
    if rows is not None:
        table = torch.zeros(cfg.num_documents, cfg.num_categories, len(SCALAR_FIELDS), dtype=torch.float64)
        for c, block in rows.items():
            table[:, c, :] = torch.from_numpy(block)
    return cfg, torch.from_numpy(scalars), torch.from_numpy(hist), reduced, table


def _arrays(*tensors: torch.Tensor):
    return [t.detach().to("cpu", torch.float64).numpy() for t in tensors]


def check_mergeable(a, b) -> None:
    """``b`` may be added into ``a`` (two :class:`HESNRAccumulator`)."""
    if a.config != b.config:
        raise StateError(f"cannot merge accumulators with different configs: {a.config} vs {b.config}")
    if a._reduced != b._reduced:
        raise StateError(
            "cannot merge a reduced accumulator (already summed over ranks) with an unreduced one: "
            "a later all_reduce() would count the reduced one's tokens once per rank"
        )
    scalars, hist = _arrays(b.scalars, b.hist)
    check_sums(b.config, scalars, hist, "merged-in state")
    if b.trajectories is not None:
        table = _arrays(b.trajectories)[0]
        check_trajectory_sums(b.config, scalars, {c: table[:, c, :] for c in range(b.config.num_categories)},
                              "merged-in state")


# ------------------------------------------------------- rank fingerprints
FINGERPRINT_FIELDS = ("state_version", "k", "threshold", "num_bins", "category_names", "state_size", "reduced")


def _float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _names_hash(names) -> int:
    digest = hashlib.sha256("\0".join(names).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def fingerprint(acc) -> list[int]:
    """What every rank of an accumulator all-reduce must agree on, as int64 values."""
    c = acc.config
    return [STATE_VERSION, c.k, _float_bits(c.threshold), c.num_bins, _names_hash(c.category_names),
            acc.state.numel(), int(acc._reduced)]


def show_fingerprint(row: list[int]) -> dict:
    out = dict(zip(FINGERPRINT_FIELDS, row))
    out["threshold"] = struct.unpack("<d", struct.pack("<q", row[2]))[0]
    out["category_names"] = f"hash {row[4] & (2**64 - 1):016x}"
    out["reduced"] = bool(row[6])
    return out
