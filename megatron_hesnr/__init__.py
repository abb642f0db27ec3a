"""megatron-hesnr: HE-SNR evaluation for Megatron-LM mid-training.

Public API::

    stats = megatron_hesnr.token_stats(logits, labels, vocab_size=V, tp_group=tp)
    acc = megatron_hesnr.HESNRAccumulator()
    acc.update(stats, mask)
    acc.all_reduce(dp_cp_group)
    acc.compute()

The names are imported on first use (PEP 562), so that ``import megatron_hesnr.cli``
and the record tools (``hesnr report`` / ``compare``) do not load torch.
"""
from __future__ import annotations

import importlib

from .metric.defaults import DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD

__version__ = "0.1.0"

_LAZY = {
    "AccumulatorConfig": ".metric.state_layout",
    "HESNRAccumulator": ".metric.accumulator",
    "TokenStats": ".metric.token_stats",
    "token_stats": ".metric.token_stats",
}

__all__ = [
    "AccumulatorConfig",
    "DEFAULT_K",
    "DEFAULT_NUM_BINS",
    "DEFAULT_THRESHOLD",
    "HESNRAccumulator",
    "TokenStats",
    "token_stats",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

