"""Parquet dataset files: one row per trajectory, read in record batches (a large file
is never loaded at once). Needs ``pyarrow`` (the ``parquet`` extra, included in ``data``)."""
from __future__ import annotations

from .base import ReadError
from .rows import Rows, collect

#: Rows per record batch: trajectories are large, so batches stay small.
BATCH_ROWS = 64
EXTRA_HINT = "pip install 'megatron-hesnr[parquet]'"


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ReadError(f"reading parquet needs pyarrow, which is not installed ({EXTRA_HINT})") from None
    return pq


def _rows(pf):
    n = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def read(path: str, select=None, allowed=None) -> Rows:
    pq = _pyarrow_parquet()
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on non-parquet bytes
        raise ReadError(f"not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if pf.metadata.num_rows == 0:
        raise ReadError("empty file (no rows)")
    try:
        return collect(_rows(pf), path, "row", None, select, allowed)
    except (OSError, ValueError) as exc:   # a corrupt page inside the file
        raise ReadError(f"parquet data unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
