"""Write ``P_tokens.bin/.idx`` and ``P_mask.bin/.idx`` as Megatron indexed datasets
(:mod:`.mmap_indexed`: one document per trajectory, one sequence per document, same
lengths in both), then ``P_manifest.json`` with the hashes that bind them.

Nothing is written under the final names until the dataset is complete: the builders
write temporary files beside them, the hashes are taken from those files as written,
and :meth:`DatasetWriter.finalize` renames the five files into place together, the
manifest last (:class:`~megatron_hesnr.atomic_write.FileSet`). The writer holds the
prefix's lock (``P.lock``) from construction to the end, so a second writer into the
same prefix is refused at once (:class:`~megatron_hesnr.atomic_write.LockedError`).
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..atomic_write import FileSet, PathLock
from .indexed import (MANIFEST_VERSION, MASK_DTYPE, binding_hash, dataset_files, lengths_hash, manifest_path,
                      prefix_lock, recover_prefix, sha256_file, token_dtype)
from .mmap_indexed import IndexedWriter


class DatasetWriter:
    """``add`` documents, then ``finalize(manifest)``; ``abort()`` (or an exception inside a
    ``with`` block) removes the temporary files and leaves an earlier dataset untouched.

    ``lock``: the prefix's lock, already held by the caller (``hesnr prepare`` takes it
    before any work); ``None``: taken here."""

    def __init__(self, prefix: str, vocab_size: int, lock: PathLock | None = None):
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self.prefix = os.path.join(os.path.realpath(parent), os.path.basename(prefix))
        self.vocab_size = int(vocab_size)
        self._own_lock = lock is None
        self._lock = prefix_lock(self.prefix).acquire() if lock is None else lock
        self._files = None
        try:
            recover_prefix(self.prefix, locked=True)
            self._files = FileSet(self.prefix + ".commit")
            final = dataset_files(self.prefix)
            self._paths = {role: self._files.stage(path) for role, path in final.items()}
            self._manifest_tmp = self._files.stage(manifest_path(self.prefix))
            self.token_dtype = token_dtype(self.vocab_size)
            self._tokens = IndexedWriter(self._paths["tokens_bin"], self.token_dtype)
            self._mask = IndexedWriter(self._paths["mask_bin"], MASK_DTYPE)
        except BaseException:
            self.abort()
            raise
        self.lengths: list[int] = []

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        ids = np.asarray(ids)
        mask = np.asarray(mask)
        if ids.ndim != 1 or ids.shape != mask.shape or len(ids) == 0:
            raise ValueError(f"document {len(self.lengths)}: ids {ids.shape} and mask {mask.shape} "
                             "must be equal non-empty 1-D arrays")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"document {len(self.lengths)}: token id outside [0, {self.vocab_size})")
        # Converted and checked before either file is written: a document enters both or neither.
        ids_out, mask_out = ids.astype(self.token_dtype), mask.astype(MASK_DTYPE)
        if not (np.array_equal(ids_out, ids) and np.array_equal(mask_out, mask)):
            raise ValueError(f"document {len(self.lengths)}: token ids and mask values must be integers "
                             f"(mask in [0, {np.iinfo(MASK_DTYPE).max}])")
        self._tokens.add_document(ids_out)
        self._mask.add_document(mask_out)
        self.lengths.append(len(ids))

    def finalize(self, manifest: dict) -> dict:
        """Close the files, write the manifest (``manifest`` gets the file fields added) and
        rename everything into place; returns the manifest written."""
        try:
            self._tokens.finalize(self._paths["tokens_idx"])
            self._mask.finalize(self._paths["mask_idx"])
            # Hashes of the bytes this writer put on disk (its own temporary files).
            hashes = {role: sha256_file(path) for role, path in self._paths.items()}
            manifest = dict(manifest)
            manifest.update({
                "manifest_version": MANIFEST_VERSION,
                "num_documents": len(self.lengths),
                "num_tokens": int(sum(self.lengths)),
                "token_dtype": np.dtype(self.token_dtype).name,
                "mask_dtype": np.dtype(MASK_DTYPE).name,
                "files": {role: {"path": os.path.basename(final), "bytes": os.path.getsize(self._paths[role]),
                                 "sha256": hashes[role]}
                          for role, final in dataset_files(self.prefix).items()},
                "lengths_sha256": lengths_hash(self.lengths),
                "binding_sha256": binding_hash(hashes),
            })
            with open(self._manifest_tmp, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, ensure_ascii=False)
            self._files.commit()
        except BaseException:
            self.abort()
            raise
        self._release()
        return manifest

    def abort(self) -> None:
        """Drop what was written so far; an earlier dataset under the prefix stays as it was.

        Closing a temporary file flushes its buffer, which fails on a full disk (ENOSPC): such an
        error is ignored (the file is dropped anyway; Python has closed its descriptor), so the
        temporary files are always removed and the lock released."""
        try:
            for builder in ("_tokens", "_mask"):
                if getattr(self, builder, None) is not None:
                    getattr(self, builder).close()
        finally:
            try:
                if self._files is not None:
                    self._files.abort()
            finally:
                self._release()

    def _release(self) -> None:
        if self._own_lock and self._lock is not None:
            self._lock.release()
        self._lock = None

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()
