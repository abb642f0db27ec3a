"""File names, dtypes and hashes of a prepared dataset (``P_tokens``, ``P_mask``,
``P_manifest.json``); the files themselves are read and written by :mod:`.mmap_indexed`."""
from __future__ import annotations

import hashlib
import os

import numpy as np

MANIFEST_VERSION = 1
MASK_DTYPE = np.uint8


def tokens_prefix(prefix: str) -> str:
    return f"{prefix}_tokens"


def mask_prefix(prefix: str) -> str:
    return f"{prefix}_mask"


def manifest_path(prefix: str) -> str:
    return f"{prefix}_manifest.json"


def dataset_files(prefix: str) -> dict[str, str]:
    """Role -> path of the four binary files."""
    return {
        "tokens_bin": tokens_prefix(prefix) + ".bin",
        "tokens_idx": tokens_prefix(prefix) + ".idx",
        "mask_bin": mask_prefix(prefix) + ".bin",
        "mask_idx": mask_prefix(prefix) + ".idx",
    }


def token_dtype(vocab_size: int):
    """Smallest dtype Megatron's readers accept for these ids (same rule as megatron-core)."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def binding_hash(file_hashes: dict[str, str]) -> str:
    """One hash over the four file hashes: binds the mask files to the token files."""
    h = hashlib.sha256()
    for role in ("tokens_bin", "tokens_idx", "mask_bin", "mask_idx"):
        h.update(f"{role}={file_hashes[role]}\n".encode())
    return h.hexdigest()


def lengths_hash(lengths) -> str:
    return hashlib.sha256(np.asarray(lengths, dtype=np.int64).tobytes()).hexdigest()


def real_prefix(prefix: str) -> str:
    """Absolute path without symlinks (the files are opened by path)."""
    return os.path.realpath(os.path.abspath(prefix))


def lock_path(prefix: str) -> str:
    """``P.lock``: held by the one process writing the prefix (see :mod:`megatron_hesnr.atomic_write`)."""
    return f"{prefix}.lock"


def journal_path(prefix: str) -> str:
    """``P.commit``: exists only while (or if killed while) a writer renames its files into place."""
    return f"{prefix}.commit"


def prefix_lock(prefix: str, wait: float = 0.0):
    from ..atomic_write import PathLock

    return PathLock(lock_path(prefix), f"--output-prefix {prefix}", wait=wait)


def recover_prefix(prefix: str, locked: bool = False, wait: float = 30.0) -> bool:
    """Finish a commit that a killed writer left half done (so the files are the new
    dataset, complete); then remove temporary files killed writers left. ``locked``: the
    caller holds the prefix's lock; otherwise it is taken here (waiting up to ``wait``
    seconds for a writer that is committing). Returns whether a commit was finished."""
    from ..atomic_write import remove_orphans, roll_forward

    journal = journal_path(prefix)
    if not locked:
        if not os.path.exists(journal):
            return False
        with prefix_lock(prefix, wait=wait):
            return roll_forward(journal)
    done = roll_forward(journal)
    remove_orphans([*dataset_files(prefix).values(), manifest_path(prefix), journal])
    return done
