"""Megatron's memory-mapped indexed dataset files (``X.bin`` + ``X.idx``), read and written
with numpy alone, byte for byte as megatron-core's ``IndexedDatasetBuilder`` writes them and
its ``IndexedDataset`` reads them (the layout is the same in megatron-core 0.13 to 0.19).

``X.bin`` holds the items of every sequence one after the other, in the dataset's dtype,
nothing else. ``X.idx`` is, all little-endian::

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    u64       format version, 1
    u8        dtype code (DTYPE_CODES)
    u64       S, the number of sequences
    u64       D, the number of document boundaries (documents + 1)
    i32[S]    sequence lengths, in items
    i64[S]    sequence pointers: byte offset of each sequence in X.bin
    i64[D]    document indices: sequence index where each document starts, then S
    i8[S]     sequence modes (multimodal datasets only; megatron-core is told, the file does not say)

A document holds any number of sequences (zero: an empty document). ``hesnr prepare``
writes one sequence per document. Reading checks the whole layout against the two files'
sizes, so a truncated, foreign or damaged file is an :class:`IndexedFileError` naming it,
not a crash or a silent wrong array.
"""
from __future__ import annotations

import os
import struct
from array import array

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
#: numpy dtype name -> the code megatron-core stores in the ``.idx`` header.
DTYPE_CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8}
_DTYPE_OF_CODE = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
#: magic, version, dtype code, sequence count, document-boundary count.
_HEADER = struct.Struct("<9sQBQQ")
_MAX_LENGTH = np.iinfo(np.int32).max


class IndexedFileError(ValueError):
    """An ``.idx`` / ``.bin`` pair that is not a readable Megatron indexed dataset (the message names the file)."""


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


class IndexedWriter:
    """Writes ``X.bin`` while documents are added, then ``X.idx`` in :meth:`finalize`.

    ``bin_file`` and ``idx_file`` are the paths written (a caller that renames them into
    place afterwards passes temporary names). ``dtype``: one of :data:`DTYPE_CODES`.
    ``data_file``: the open ``X.bin``."""

    def __init__(self, bin_file: str, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in DTYPE_CODES:
            raise ValueError(f"{bin_file}: dtype {self.dtype.name} cannot be stored in a Megatron indexed dataset "
                             f"(one of {', '.join(DTYPE_CODES)})")
        self.bin_file = bin_file
        self._lengths = array("q")
        self._doc_starts = array("q", [0])
        self.data_file = open(bin_file, "wb")

    @property
    def num_documents(self) -> int:
        return len(self._doc_starts) - 1

    def add_document(self, items, lengths=None) -> None:
        """One document: ``items`` (1-D) cut into sequences of ``lengths`` (default: one
        sequence of all of them; ``[]`` with no items: an empty document). Values that the
        dataset's dtype cannot hold exactly are refused."""
        data = np.asarray(items)
        if data.ndim != 1:
            raise ValueError(f"{self.bin_file}: document {self.num_documents}: items must be 1-D, got shape {data.shape}")
        out = data.astype(self.dtype, copy=False)
        if out is not data and not np.array_equal(out, data):
            raise ValueError(f"{self.bin_file}: document {self.num_documents}: values do not fit dtype {self.dtype.name}")
        lengths = [len(out)] if lengths is None else [int(n) for n in lengths]
        if any(n < 0 or n > _MAX_LENGTH for n in lengths) or sum(lengths) != len(out):
            raise ValueError(f"{self.bin_file}: document {self.num_documents}: sequence lengths {lengths[:8]} "
                             f"must be in [0, {_MAX_LENGTH}] and add up to its {len(out)} items")
        self.data_file.write(np.ascontiguousarray(out).tobytes())
        self._lengths.extend(lengths)
        self._doc_starts.append(len(self._lengths))

    def finalize(self, idx_file: str) -> None:
        """Close ``X.bin`` and write ``X.idx``."""
        self.data_file.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int64) if len(self._lengths) else np.zeros(0, np.int64)
        ends = np.cumsum(lengths * self.dtype.itemsize, dtype=np.int64)
        pointers = np.concatenate([np.zeros(1, np.int64), ends[:-1]]) if len(lengths) else ends
        with open(idx_file, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, DTYPE_CODES[self.dtype.name], len(lengths), len(self._doc_starts)))
            f.write(lengths.astype("<i4").tobytes())
            f.write(pointers.astype("<i8").tobytes())
            f.write(np.frombuffer(self._doc_starts, dtype=np.int64).astype("<i8").tobytes())

    def close(self) -> None:
        """Close ``X.bin`` without writing the index (the caller removes the files). A failing
        flush (a full disk) is ignored here: the file is being dropped."""
        if not self.data_file.closed:
            try:
                self.data_file.close()
            except OSError:
                pass


def _array(path: str, dtype, offset: int, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` at byte ``offset`` of ``path``, memory-mapped (numpy cannot map nothing)."""
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


class IndexedFile:
    """Reads ``prefix.idx`` and ``prefix.bin``: ``len(f)`` sequences, ``f[i]`` the items of
    sequence ``i`` (a read-only view into the memory-mapped ``.bin``, in the file's dtype).

    ``sequence_lengths`` (int32), ``sequence_pointers`` (int64), ``document_indices`` (int64,
    ``num_documents + 1`` entries) and ``sequence_modes`` (int8, or ``None`` when the index has
    none) are the index's arrays as stored."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.idx_file, self.bin_file = idx_path(prefix), bin_path(prefix)
        where = self.idx_file
        try:
            with open(self.idx_file, "rb") as f:
                head = f.read(_HEADER.size)
                idx_size = os.fstat(f.fileno()).st_size
            bin_size = os.path.getsize(self.bin_file)
        except OSError as exc:
            raise IndexedFileError(f"{exc.filename or where}: cannot read ({exc.strerror or exc})") from None
        if not (head.startswith(MAGIC) or MAGIC.startswith(head)):
            raise IndexedFileError(f"{where}: not a Megatron indexed dataset index (no MMIDIDX header)")
        if len(head) < _HEADER.size:
            raise IndexedFileError(f"{where}: truncated header ({idx_size} of {_HEADER.size} bytes)")
        _, version, code, n_seq, n_bounds = _HEADER.unpack(head)
        if version != VERSION:
            raise IndexedFileError(f"{where}: index format version {version}; only version {VERSION} is known")
        if code not in _DTYPE_OF_CODE:
            raise IndexedFileError(f"{where}: unknown dtype code {code}")
        self.dtype = _DTYPE_OF_CODE[code]
        plain = _HEADER.size + 12 * n_seq + 8 * n_bounds
        if n_bounds < 1 or idx_size not in (plain, plain + n_seq):
            raise IndexedFileError(f"{where}: {idx_size} bytes, but its header announces {n_seq} sequences and "
                                   f"{n_bounds} document boundaries ({plain} bytes); the file is truncated or damaged")
        off = _HEADER.size
        self.sequence_lengths = _array(where, "<i4", off, n_seq)
        self.sequence_pointers = _array(where, "<i8", off + 4 * n_seq, n_seq)
        self.document_indices = _array(where, "<i8", off + 12 * n_seq, n_bounds)
        self.sequence_modes = _array(where, "i1", plain, n_seq) if idx_size > plain else None
        self._check(bin_size)
        self._data = _array(self.bin_file, self.dtype, 0, bin_size // self.dtype.itemsize)

    def _check(self, bin_size: int) -> None:
        lengths, pointers, docs = self.sequence_lengths, self.sequence_pointers, self.document_indices
        where = self.idx_file
        if len(lengths) and lengths.min() < 0:
            raise IndexedFileError(f"{where}: negative sequence length")
        if docs[0] != 0 or docs[-1] != len(lengths) or (len(docs) > 1 and np.diff(docs).min() < 0):
            raise IndexedFileError(f"{where}: document indices do not run from 0 to {len(lengths)} in order")
        item = self.dtype.itemsize
        if len(pointers) and (pointers.min() < 0 or (pointers % item).any()):
            raise IndexedFileError(f"{where}: sequence pointer outside {self.bin_file} or not on an item boundary")
        ends = pointers + lengths.astype(np.int64) * item
        if len(ends) and ends.max() > bin_size:
            i = int(np.argmax(ends > bin_size))
            raise IndexedFileError(f"{self.bin_file}: {bin_size} bytes, but {where} places sequence {i} at bytes "
                                   f"{int(pointers[i])}..{int(ends[i])}; the files are truncated or do not belong together")

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self._data[start:start + int(self.sequence_lengths[i])]
