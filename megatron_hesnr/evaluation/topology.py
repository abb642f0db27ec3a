"""Where this rank sits in the parallel layout: the one value the evaluation needs about it.

Everything below the front ends receives the layout as a :class:`Topology`.  Two
translations make one: :func:`megatron_hesnr.megatron_lm.topology_from_parallel_state`
(Megatron-LM's global ``parallel_state``) and :func:`topology_from_pg_collection` (a
megatron-core ``ProcessGroupCollection``, what Megatron-Bridge's model carries).

Layout facts relied on (megatron-core, order ``tp-cp-ep-dp-pp``):

* the output layer splits the (padded) vocabulary over the tensor-parallel group;
* the data-parallel x context-parallel group (``get_data_parallel_group(with_context_parallel=True)``,
  ``pg_collection.dp_cp``) joins the ranks that hold different tokens of the same model
  stage.  The expert layout (EP x expert-DP x expert-TP) re-slices the same ranks for MoE
  weights only; it changes no rank's tokens, so EP ranks reduce like any DP rank and the
  expert groups are never used;
* only the last pipeline stage computes logits.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..metric.accumulator import HESNRAccumulator
from ..metric.reduction import broadcast_metrics, reduce_on_last_stage


def default_device() -> torch.device:
    """The current CUDA device, or the CPU without one."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True, kw_only=True)
class Topology:
    """This rank's place: groups of size 1 are ``None``; the defaults are one process."""

    tp_group: Any = None
    """The group the output layer's vocabulary is split over (the statistics are merged over it)."""
    tp_rank: int = 0
    tp_size: int = 1
    tp_src: int = 0
    """Global rank of tensor-parallel rank 0 (it reads the data and broadcasts it to its TP group)."""
    reduce_group: Any = None
    """Data-parallel x context-parallel group: the one all-reduce of the accumulator."""
    dp_rank: int = 0
    dp_size: int = 1
    """Data-parallel place (without CP): which windows this rank's micro-batches hold."""
    cp_rank: int = 0
    cp_size: int = 1
    is_last_stage: bool = True
    """Only the last pipeline stage has logits and accumulates."""
    pp_size: int = 1
    cp_split: Callable[[dict], dict] | None = field(default=None, compare=False)
    """Splits a batch dict for this CP rank (megatron-core's ``get_batch_on_this_cp_rank``); needed when CP > 1."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self):
        for name in ("tp", "dp", "cp", "pp"):
            size = getattr(self, f"{name}_size")
            if int(size) != size or size < 1:
                raise ValueError(f"Topology.{name}_size must be a positive integer, got {size}")
        for name in ("tp", "dp", "cp"):
            rank, size = getattr(self, f"{name}_rank"), getattr(self, f"{name}_size")
            if not 0 <= rank < size:
                raise ValueError(f"Topology.{name}_rank must be in [0, {size}), got {rank}")
        if self.tp_size > 1 and self.tp_group is None:
            raise ValueError(f"Topology.tp_group is needed with tp_size={self.tp_size}")


def megatron_cp_split(cp_group) -> Callable[[dict], dict]:
    """Megatron-core's own ``get_batch_on_this_cp_rank`` bound to ``cp_group``.

    Its signature differs between versions (``(batch)``, ``(batch, cp_group)``,
    ``(batch, is_hybrid_cp, cp_group, ...)``); the split is always the 2 x CP
    chunk layout the loss mask gets, which is what the scoring mask must get too.
    """
    from megatron.core.utils import get_batch_on_this_cp_rank as split

    params = inspect.signature(split).parameters
    kwargs = {}
    if "cp_group" in params:
        kwargs["cp_group"] = cp_group
    if "is_hybrid_cp" in params:
        kwargs["is_hybrid_cp"] = False

    def cp_split(batch: dict) -> dict:
        return split(dict(batch), **kwargs)

    return cp_split


def topology_from_pg_collection(pgc, device: torch.device | None = None) -> Topology:
    """This rank's place from a megatron-core ``ProcessGroupCollection`` (``pg_collection=``
    of newer ``pretrain`` / model builders, Bridge's model), for runs whose groups are not
    the ``parallel_state`` globals.  Uses its ``tp``, ``cp``, ``dp``, ``dp_cp`` and ``pp`` groups."""
    import torch.distributed as dist

    def get(name):
        group = getattr(pgc, name, None)
        if group is None:
            raise ValueError(f"pg_collection has no '{name}' process group; the HE-SNR metric needs "
                             "tp, cp, dp, dp_cp and pp")
        return group

    tp, cp, dp, dp_cp, pp = (get(n) for n in ("tp", "cp", "dp", "dp_cp", "pp"))
    tp_size, cp_size = dist.get_world_size(tp), dist.get_world_size(cp)
    return Topology(
        tp_group=tp if tp_size > 1 else None,
        tp_rank=dist.get_rank(tp),
        tp_size=tp_size,
        tp_src=dist.get_global_rank(tp, 0) if tp_size > 1 else dist.get_rank(),
        reduce_group=dp_cp if dist.get_world_size(dp_cp) > 1 else None,
        dp_rank=dist.get_rank(dp),
        dp_size=dist.get_world_size(dp),
        cp_rank=dist.get_rank(cp),
        cp_size=cp_size,
        is_last_stage=dist.get_rank(pp) == dist.get_world_size(pp) - 1,
        pp_size=dist.get_world_size(pp),
        cp_split=megatron_cp_split(cp) if cp_size > 1 else None,
        device=default_device() if device is None else device,
    )


def reduce_metrics(acc: HESNRAccumulator, topology: Topology, *, to_all_ranks: bool = False) -> dict | None:
    """Reduce ``acc`` once and compute the metrics.

    Every rank calls it after the evaluation loop.  Last-stage ranks all-reduce over
    ``topology.reduce_group`` and return the metrics; other ranks return ``None``, which
    is what Megatron's logging expects: results are printed and written (TensorBoard,
    W&B) by the last rank of the world, which is on the last stage.
    ``to_all_ranks=True`` then broadcasts the result from the last rank to every rank of
    the world (one more collective, e.g. for a writer on rank 0).
    """
    metrics = reduce_on_last_stage(acc, topology.reduce_group, topology.is_last_stage)
    if to_all_ranks:
        import torch.distributed as dist

        metrics = broadcast_metrics(metrics, src=dist.get_world_size() - 1)
    return metrics
