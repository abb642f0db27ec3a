"""megatron-hesnr: HE-SNR evaluation for Megatron-LM mid-training.

Public API::

    stats = megatron_hesnr.token_stats(logits, labels, vocab_size=V, tp_group=tp)
    acc = megatron_hesnr.HESNRAccumulator()
    acc.update(stats, mask)
    acc.all_reduce(dp_cp_group)
    acc.compute()
"""
from .accumulator import AccumulatorConfig, HESNRAccumulator
from .defaults import DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD
from .token_stats import TokenStats, token_stats

__version__ = "0.1.0"

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
