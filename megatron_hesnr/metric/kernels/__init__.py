"""Fused kernels for the per-shard statistics (the PyTorch reference is the oracle)."""
from __future__ import annotations


def triton_available() -> bool:
    """True when Triton and our kernel module import."""
    try:
        from . import triton_shard_stats  # noqa: F401
    except ImportError:
        return False
    return True


def shard_stats_triton(rows, labels, shard, k):
    """Fused single-pass statistics of a logits shard (see ``triton_shard_stats``)."""
    try:
        from .triton_shard_stats import shard_stats_triton as _impl
    except ImportError as exc:
        raise RuntimeError(
            "impl='triton' needs the 'triton' package (pip install 'megatron-hesnr[triton]')"
        ) from exc
    return _impl(rows, labels, shard, k)
