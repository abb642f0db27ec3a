"""Read a prepared dataset back: token ids and the aligned scoring mask, per trajectory."""
from __future__ import annotations

import json
import os

import numpy as np

from .indexed import (MANIFEST_VERSION, binding_hash, dataset_files, journal_path, lengths_hash, manifest_path,
                      mask_prefix, real_prefix, recover_prefix, sha256_file, tokens_prefix)
from .mmap_indexed import IndexedFile, IndexedFileError


def _identity(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class PreparedDatasetError(ValueError):
    """A prepared dataset that is missing, inconsistent or does not match its manifest."""


class PreparedDataset:
    """``P_tokens`` + ``P_mask`` (Megatron indexed datasets, :mod:`.mmap_indexed`) + ``P_manifest.json``.

    ``ds[i]`` -> ``(ids, mask)`` for document (trajectory) ``i``: ``ids`` int64 ``[L]``,
    ``mask`` uint8 ``[L]``. ``mask[j]`` is the category of token ``j`` *itself*
    (0 not scored, 1 action, 2 thought, 3 observation): token ``j`` is scored as a
    prediction target when ``mask[j] > 0``. A language model predicts token ``j`` from
    the logits at position ``j - 1``, so a consumer that scores logits at position
    ``p`` must use ``mask[p + 1]`` (labels = ``ids[1:]``, loss mask = ``mask[1:]``);
    ``mask[0]`` is never a target.

    On open, the manifest is read and checked against the files: the document count
    and every document length must agree between tokens and mask, and the lengths must
    hash to the manifest's ``lengths_sha256``. With ``verify="full"`` (default) the four
    files are also hashed and compared with the manifest, which binds the mask to the
    token file; ``verify="sizes"`` compares only byte sizes (for very large datasets).
    """

    def __init__(self, prefix: str, verify: str = "full"):
        if verify not in ("full", "sizes"):
            raise ValueError(f"verify must be 'full' or 'sizes', not {verify!r}")
        self.prefix = real_prefix(prefix)
        # A writer renames its files into place while this reads them: open again (the
        # memory maps of an earlier try keep the files they mapped, so check afterwards).
        for attempt in range(3):
            self._recover()
            before = _identity(manifest_path(self.prefix))
            self._open(verify)
            if not os.path.exists(journal_path(self.prefix)) and _identity(manifest_path(self.prefix)) == before:
                return
        raise PreparedDatasetError(f"{self.prefix}: the files kept changing while being opened "
                                   "(a `hesnr prepare` is writing this prefix); open it when it has finished")

    def _recover(self) -> None:
        from ..atomic_write import LockedError

        try:
            recover_prefix(self.prefix)
        except LockedError as exc:
            raise PreparedDatasetError(f"{journal_path(self.prefix)}: a writer is renaming its files into place "
                                       f"and did not finish within 30 s ({exc})") from None
        except (OSError, ValueError) as exc:
            raise PreparedDatasetError(f"{journal_path(self.prefix)}: a `hesnr prepare` was killed while renaming "
                                       f"its files into place, and finishing that here failed ({exc}); run "
                                       "`hesnr prepare` again with this prefix") from None

    def _open(self, verify: str) -> None:
        mpath = manifest_path(self.prefix)
        if not os.path.exists(mpath):
            raise PreparedDatasetError(f"{mpath}: manifest not found (prepare the data with `hesnr prepare`)")
        try:
            with open(mpath, encoding="utf-8") as f:
                self.manifest: dict = json.load(f)
        except (OSError, ValueError, RecursionError) as exc:   # ValueError: bad UTF-8 / JSON / huge integers
            raise PreparedDatasetError(f"{mpath}: unreadable manifest ({exc})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("manifest_version") != MANIFEST_VERSION:
            raise PreparedDatasetError(f"{mpath}: not a version-{MANIFEST_VERSION} hesnr manifest")
        vocab = (self.manifest.get("tokenizer") or {}).get("vocab_size")
        if not isinstance(vocab, int) or vocab <= 0:
            raise PreparedDatasetError(f"{mpath}: field tokenizer.vocab_size missing or invalid")
        self._check_files(mpath, verify)
        try:
            self._tokens = IndexedFile(tokens_prefix(self.prefix))
            self._mask = IndexedFile(mask_prefix(self.prefix))
        except IndexedFileError as exc:
            raise PreparedDatasetError(str(exc)) from None
        t_len = np.asarray(self._tokens.sequence_lengths, dtype=np.int64)
        m_len = np.asarray(self._mask.sequence_lengths, dtype=np.int64)
        if len(t_len) != len(m_len):
            raise PreparedDatasetError(f"{tokens_prefix(self.prefix)}.idx has {len(t_len)} documents but "
                                       f"{mask_prefix(self.prefix)}.idx has {len(m_len)}")
        bad = np.flatnonzero(t_len != m_len)
        if len(bad):
            i = int(bad[0])
            raise PreparedDatasetError(f"{mask_prefix(self.prefix)}.idx: document {i} has {m_len[i]} mask "
                                       f"entries for {t_len[i]} tokens")
        if len(t_len) != self.manifest.get("num_documents") or lengths_hash(t_len) != self.manifest.get("lengths_sha256"):
            raise PreparedDatasetError(f"{tokens_prefix(self.prefix)}.idx: document lengths do not match {mpath}")
        for name, part in ((tokens_prefix(self.prefix), self._tokens), (mask_prefix(self.prefix), self._mask)):
            if not np.array_equal(np.asarray(part.document_indices), np.arange(len(t_len) + 1)):
                raise PreparedDatasetError(f"{name}.idx: expected one sequence per document (trajectory)")
        docs = self.manifest.get("documents")
        # Optional (datasets written through the API may leave it out); when there, one per document.
        if "documents" in self.manifest and (not isinstance(docs, list) or len(docs) != len(t_len)
                                             or not all(isinstance(d, dict) for d in docs)):
            got = f"a list of {len(docs)}" if isinstance(docs, list) else type(docs).__name__
            raise PreparedDatasetError(f"{mpath}: field documents must list one object per document "
                                       f"({len(t_len)}), got {got}")
        self.lengths = t_len

    def _check_files(self, mpath: str, verify: str) -> None:
        recorded = self.manifest.get("files") or {}
        hashes = {}
        for role, path in dataset_files(self.prefix).items():
            if not os.path.exists(path):
                raise PreparedDatasetError(f"{path}: missing (listed in {mpath})")
            info = recorded.get(role) or {}
            if os.path.getsize(path) != info.get("bytes"):
                raise PreparedDatasetError(f"{path}: size {os.path.getsize(path)} differs from {mpath} "
                                           f"({info.get('bytes')}); the files do not belong together")
            if verify == "full":
                hashes[role] = sha256_file(path)
                if hashes[role] != info.get("sha256"):
                    raise PreparedDatasetError(f"{path}: sha256 differs from {mpath}; the files do not belong together")
        if verify == "full" and binding_hash(hashes) != self.manifest.get("binding_sha256"):
            raise PreparedDatasetError(f"{mpath}: binding_sha256 does not match the token and mask files")

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for {len(self)} documents")
        i = int(i) % len(self)
        # Copies (int64 ids, uint8 mask), not views into the memory-mapped files.
        ids = np.array(self._tokens[i], dtype=np.int64, copy=True)
        mask = np.array(self._mask[i], dtype=np.uint8, copy=True)
        return ids, mask

    def source(self, i: int) -> str:
        """The trajectory file (and JSONL line) document ``i`` came from."""
        docs = self.manifest.get("documents")
        return docs[i].get("source", "?") if docs else "?"
