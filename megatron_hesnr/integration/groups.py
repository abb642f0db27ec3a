"""The process groups the metric needs, read from megatron-core's ``parallel_state``.

This is the one place that looks at Megatron's global groups; everything below
the integration layer receives them explicitly through :class:`MetricGroups`.

Layout facts relied on (megatron-core 0.16, order ``tp-cp-ep-dp-pp``):

* the output layer splits the (padded) vocabulary over the tensor-parallel group;
* ``get_data_parallel_group(with_context_parallel=True)`` joins the ranks that
  hold different tokens of the same model stage: data-parallel replicas and
  context-parallel sequence shards.  The expert layout (EP x expert-DP x
  expert-TP) re-slices the same ranks for MoE weights only; it changes no
  rank's tokens, so EP ranks reduce like any DP rank and the expert groups are
  never used;
* only the last pipeline stage computes logits.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..accumulator import HESNRAccumulator
from ..reduction import broadcast_metrics, reduce_on_last_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricGroups:
    """Everything the distributed metric needs to know about the parallel layout."""

    tp: "ProcessGroup | None"  # noqa: F821  group the output-layer vocab is split over (None = no TP)
    reduce: "ProcessGroup | None"  # noqa: F821  DP x CP group for acc.all_reduce (None = size 1)
    cp_rank: int
    cp_size: int
    is_last_stage: bool  # only the last pipeline stage has logits and accumulates

    def __post_init__(self):
        if int(self.cp_size) != self.cp_size or self.cp_size < 1:
            raise ValueError(f"MetricGroups.cp_size must be a positive integer, got {self.cp_size}")
        if not 0 <= self.cp_rank < self.cp_size:
            raise ValueError(f"MetricGroups.cp_rank must be in [0, {self.cp_size}), got {self.cp_rank}")


def _is_last_stage(ps) -> bool:
    try:
        # The last stage of the real pipeline, whatever virtual chunk is current:
        # the metric is reduced after the whole evaluation, not per model chunk.
        return bool(ps.is_pipeline_last_stage(ignore_virtual=True))
    except TypeError:  # older signature without ignore_virtual
        return bool(ps.is_pipeline_last_stage())


def metric_groups_from_parallel_state() -> MetricGroups:
    """The groups of this rank, from megatron-core's initialized ``parallel_state``."""
    try:
        from megatron.core import parallel_state as ps
    except ImportError as e:
        raise ImportError(
            "metric_groups_from_parallel_state needs megatron-core (pip install megatron-core)"
        ) from e
    if not ps.model_parallel_is_initialized():
        raise RuntimeError(
            "megatron.core.parallel_state is not initialized: call "
            "parallel_state.initialize_model_parallel(...) (Megatron's initialize_megatron does) "
            "before building the HE-SNR groups, or pass a MetricGroups explicitly"
        )
    tp = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
    dp_cp_size = ps.get_data_parallel_world_size(with_context_parallel=True)
    reduce = ps.get_data_parallel_group(with_context_parallel=True) if dp_cp_size > 1 else None
    groups = MetricGroups(
        tp=tp,
        reduce=reduce,
        cp_rank=ps.get_context_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        is_last_stage=_is_last_stage(ps),
    )
    logger.debug(
        "HE-SNR groups: tp=%d dp_cp=%d cp=%d/%d last_stage=%s",
        ps.get_tensor_model_parallel_world_size(), dp_cp_size, groups.cp_rank, groups.cp_size,
        groups.is_last_stage,
    )
    return groups


def metric_groups_from_pg_collection(pg_collection) -> MetricGroups:
    """The groups from a megatron-core ``ProcessGroupCollection`` (``pg_collection=``
    of newer ``pretrain``/model builders), for runs whose groups are not the
    ``parallel_state`` globals.  Uses its ``tp``, ``cp``, ``dp_cp`` and ``pp`` groups."""
    import torch.distributed as dist

    def get(name):
        group = getattr(pg_collection, name, None)
        if group is None:
            raise ValueError(f"pg_collection has no '{name}' process group; the HE-SNR metric needs tp, cp, dp_cp, pp")
        return group

    tp, cp, dp_cp, pp = get("tp"), get("cp"), get("dp_cp"), get("pp")
    return MetricGroups(
        tp=tp if dist.get_world_size(tp) > 1 else None,
        reduce=dp_cp if dist.get_world_size(dp_cp) > 1 else None,
        cp_rank=dist.get_rank(cp),
        cp_size=dist.get_world_size(cp),
        is_last_stage=dist.get_rank(pp) == dist.get_world_size(pp) - 1,
    )


def reduce_metrics(acc: HESNRAccumulator, groups: MetricGroups, *, to_all_ranks: bool = False) -> dict | None:
    """Reduce ``acc`` once and compute the metrics.

    Every rank calls it after the evaluation loop.  Last-stage ranks all-reduce
    over ``groups.reduce`` and return the metrics; other ranks return ``None``,
    which is what Megatron's logging expects: results are printed and written
    (TensorBoard, W&B) by the last rank of the world, which is on the last
    stage.  ``to_all_ranks=True`` then broadcasts the result from the last rank
    to every rank of the world (one more collective, e.g. for a writer on rank 0).
    """
    metrics = reduce_on_last_stage(acc, groups.reduce, groups.is_last_stage)
    if to_all_ranks:
        import torch.distributed as dist

        metrics = broadcast_metrics(metrics, src=dist.get_world_size() - 1)
    return metrics
