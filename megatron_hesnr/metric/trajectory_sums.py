"""Per-trajectory sums: the accumulator's scalar fields for every trajectory.

Tokens inside one trajectory are strongly correlated, so the honest sampling unit
for a standard error is the trajectory.  This table keeps, for each of a fixed,
known number of trajectories (``num_documents``, the size of the evaluation set)
and each mask category, the same scalar sums as the accumulator's overall state
(``SCALAR_FIELDS``); there is no histogram per trajectory.

Layout: a float64 view ``[num_documents, num_categories, len(fields)]`` into the
accumulator's flat buffer, after the scalars and the histogram.  Every rank's
buffer therefore has the same size, the one all-reduce over DP x CP sums the table
with the rest (a trajectory whose windows land on several ranks is summed
correctly), and ``merge`` adds it like any other sum.

Size: ``num_documents * num_categories * len(fields) * 8`` bytes in memory and on
the wire, e.g. 100,000 trajectories x 1 category x 10 fields = 8 MB (24 MB with
the three default categories).  In JSON only the categories that have tokens are
written, one list per field (see :func:`table_to_json`).
"""
from __future__ import annotations

import torch


def table_size(num_documents: int | None, num_categories: int, num_fields: int) -> int:
    """Number of float64 entries the table adds to the flat buffer (0 when not tracked)."""
    return 0 if num_documents is None else int(num_documents) * num_categories * num_fields


def document_index(doc_ids: torch.Tensor, shape, num_documents: int, scored: torch.Tensor) -> torch.Tensor:
    """Flat int64 trajectory index of every token, validated.

    ``doc_ids``: integer tensor with the token statistics' ``shape``; negative means
    "no trajectory", allowed only where the token is not scored (``scored`` False).
    """
    if not isinstance(doc_ids, torch.Tensor):
        raise TypeError(f"doc_ids must be a torch.Tensor of trajectory indices, got {type(doc_ids).__name__}")
    if tuple(doc_ids.shape) != tuple(shape):
        raise ValueError(f"doc_ids shape {tuple(doc_ids.shape)} != token stats shape {tuple(shape)}")
    if doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool or doc_ids.is_complex():
        raise TypeError(f"doc_ids must hold integer trajectory indices, got {doc_ids.dtype}")
    ids = doc_ids.reshape(-1).to(torch.long)
    if ids.numel() == 0:
        return ids
    hi = int(ids.max())
    if hi >= num_documents:
        raise ValueError(f"doc_ids holds trajectory index {hi}, outside [0, num_documents = {num_documents})")
    missing = int((scored.reshape(-1).to(ids.device) & (ids < 0)).sum())
    if missing:
        raise ValueError(f"doc_ids: {missing} scored token(s) (mask > 0) have a negative trajectory index; "
                         "every scored token needs its trajectory for the standard errors")
    return ids


def add_rows(table: torch.Tensor, doc: torch.Tensor, cat: torch.Tensor, cols: torch.Tensor) -> None:
    """``table[doc, cat] += cols`` (rows of ``cols`` are tokens, columns the fields)."""
    n_cat, n_fields = table.shape[1], table.shape[2]
    table.view(-1, n_fields).index_add_(0, doc.to(table.device) * n_cat + cat, cols)


def table_to_json(table: torch.Tensor, fields, category_names) -> dict:
    """``{"fields", "num_documents", "by_category": {name: {field: [per trajectory]}}}``.

    Categories without any token are left out (all their sums are zero); counts are
    written as integers, sums as exact float64 reprs.
    """
    t = table.cpu()
    out = {}
    for c, name in enumerate(category_names):
        block = t[:, c, :]
        if not bool(block.any()):
            continue
        cols = {}
        for j, f in enumerate(fields):
            col = block[:, j]
            is_int = bool((col == col.round()).all()) and float(col.abs().max()) < 2 ** 53
            cols[f] = [int(v) for v in col.tolist()] if is_int else col.tolist()
        out[name] = cols
    return {"fields": list(fields), "num_documents": int(t.shape[0]), "by_category": out}


def present(rows: torch.Tensor, fields) -> torch.Tensor:
    """bool [num_documents]: trajectories with at least one scored token in ``rows``
    (``[num_documents, len(fields)]``), valid or not."""
    f = list(fields)
    return (rows[:, f.index("num_tokens")] + rows[:, f.index("num_invalid")]) > 0
