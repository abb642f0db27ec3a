"""Parquet dataset files: one row per trajectory, read in record batches (a large file
is never loaded at once). Needs ``pyarrow`` (the ``parquet`` extra, included in ``data``).

A large file is prepared in *parts* (consecutive row groups, about ``PART_ROWS`` rows
each): each part is read, rendered and tokenized on its own, so memory holds one part's
trajectories and ``--workers`` share the parts of one file.
"""
from __future__ import annotations

from .base import ReadError
from .rows import Rows, collect

#: Rows per record batch: trajectories are large, so batches stay small.
BATCH_ROWS = 64
#: Rows per part (rounded to whole row groups).
PART_ROWS = 64
EXTRA_HINT = "pip install 'megatron-hesnr[parquet]'"


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ReadError(f"reading parquet needs pyarrow, which is not installed ({EXTRA_HINT})") from None
    return pq


def _open(path: str):
    pq = _pyarrow_parquet()
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on non-parquet bytes
        raise ReadError(f"not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None


def parts(path: str) -> list:
    """``[(first row group, end row group, number of the first row), ...]`` covering the
    file, or ``[None]`` (read it whole) when it has one row group or cannot be opened
    here (reading it then reports why)."""
    try:
        meta = _open(path).metadata
    except ReadError:
        return [None]
    if meta.num_row_groups <= 1:
        return [None]
    out, start, first, rows = [], 0, 1, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= PART_ROWS or g == meta.num_row_groups - 1:
            out.append((start, g + 1, first))
            start, first, rows = g + 1, first + rows, 0
    return out


def _rows(pf, part):
    groups, n = (None, 0) if part is None else (list(range(part[0], part[1])), part[2] - 1)
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def read(path: str, select=None, allowed=None, part=None) -> Rows:
    pf = _open(path)
    if pf.metadata.num_rows == 0:
        raise ReadError("empty file (no rows)")
    try:
        return collect(_rows(pf, part), path, "row", None, select, allowed)
    except (OSError, ValueError) as exc:   # a corrupt page inside the file
        raise ReadError(f"parquet data unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
