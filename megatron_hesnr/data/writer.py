"""Write ``P_tokens.bin/.idx`` and ``P_mask.bin/.idx`` with megatron-core's
``IndexedDatasetBuilder`` (one document per trajectory, one sequence per document,
same lengths in both), then ``P_manifest.json`` with the hashes that bind them."""
from __future__ import annotations

import json
import os

import numpy as np

from .indexed import (MANIFEST_VERSION, MASK_DTYPE, binding_hash, dataset_files, lengths_hash,
                      manifest_path, mask_prefix, megatron_indexed, sha256_file, token_dtype,
                      tokens_prefix)


class DatasetWriter:
    def __init__(self, prefix: str, vocab_size: int):
        self.prefix = prefix
        self.vocab_size = int(vocab_size)
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        idx = megatron_indexed()
        self.token_dtype = token_dtype(self.vocab_size)
        self._tokens = idx.IndexedDatasetBuilder(tokens_prefix(prefix) + ".bin", dtype=self.token_dtype)
        self._mask = idx.IndexedDatasetBuilder(mask_prefix(prefix) + ".bin", dtype=MASK_DTYPE)
        self.lengths: list[int] = []

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        ids = np.asarray(ids)
        mask = np.asarray(mask)
        if ids.ndim != 1 or ids.shape != mask.shape or len(ids) == 0:
            raise ValueError(f"document {len(self.lengths)}: ids {ids.shape} and mask {mask.shape} "
                             "must be equal non-empty 1-D arrays")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"document {len(self.lengths)}: token id outside [0, {self.vocab_size})")
        self._tokens.add_document(ids.astype(self.token_dtype), [len(ids)])
        self._mask.add_document(mask.astype(MASK_DTYPE), [len(mask)])
        self.lengths.append(len(ids))

    def finalize(self, manifest: dict) -> dict:
        """Close the files and write the manifest (``manifest`` gets the file fields added)."""
        self._tokens.finalize(tokens_prefix(self.prefix) + ".idx")
        self._mask.finalize(mask_prefix(self.prefix) + ".idx")
        files = dataset_files(self.prefix)
        hashes = {role: sha256_file(path) for role, path in files.items()}
        manifest = dict(manifest)
        manifest.update({
            "manifest_version": MANIFEST_VERSION,
            "num_documents": len(self.lengths),
            "num_tokens": int(sum(self.lengths)),
            "token_dtype": np.dtype(self.token_dtype).name,
            "mask_dtype": np.dtype(MASK_DTYPE).name,
            "files": {role: {"path": os.path.basename(p), "bytes": os.path.getsize(p), "sha256": hashes[role]}
                      for role, p in files.items()},
            "lengths_sha256": lengths_hash(self.lengths),
            "binding_sha256": binding_hash(hashes),
        })
        tmp = manifest_path(self.prefix) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
        os.replace(tmp, manifest_path(self.prefix))
        return manifest
