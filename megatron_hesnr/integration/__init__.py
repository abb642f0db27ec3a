"""Shared HE-SNR evaluation and the Megatron-LM adapter (docs/design.md lists the modules that read Megatron globals)."""
from .groups import (
    MetricGroups,
    metric_groups_from_parallel_state,
    metric_groups_from_pg_collection,
    reduce_metrics,
)

__all__ = [
    "MetricGroups",
    "metric_groups_from_parallel_state",
    "metric_groups_from_pg_collection",
    "reduce_metrics",
]
