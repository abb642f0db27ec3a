"""Reducing an accumulator across data-parallel ranks and pipeline stages.

Who holds what under Megatron's layouts (each token must be counted once):

* TP ranks of one model replica hold identical per-token statistics after the
  TP merge, so the sum is never taken over the TP group.
* Data-parallel and context-parallel ranks hold different tokens; their sums
  add up, so the accumulator is all-reduced once over the DP x CP group
  (Megatron's ``get_data_parallel_group(with_context_parallel=True)``).  Expert
  parallelism does not change which tokens a rank holds: EP ranks are DP ranks
  for this purpose, and the expert-data-parallel group is never used.
* Only the last pipeline stage has logits; the other stages have nothing to
  add and take no part in the reduction.

After :func:`reduce_on_last_stage` every rank of the last stage holds the same
result.  Megatron logs evaluation results from the last rank of the world
(``is_last_rank()``, which lies on the last stage, with the TensorBoard and
W&B writers), so nothing more is needed there; :func:`broadcast_metrics` copies
the result to every rank for a consumer that lives elsewhere.
"""
from __future__ import annotations

import torch.distributed as dist

from .accumulator import HESNRAccumulator


def reduce_on_last_stage(acc: HESNRAccumulator, reduce_group, is_last_stage: bool) -> dict | None:
    """All-reduce ``acc`` over ``reduce_group`` (DP x CP) and compute the metrics.

    Call on every rank; only last-stage ranks communicate (each last-stage
    rank's DP x CP group lies within the last stage).  Returns the metrics dict
    on the last stage and ``None`` elsewhere.  ``reduce_group=None`` means a
    single data-parallel replica.
    """
    if not is_last_stage:
        sums = acc.sums()
        if sums["num_tokens"] or sums["num_invalid"]:
            raise RuntimeError(
                "an accumulator outside the last pipeline stage holds tokens; only the "
                "last stage has logits, so only it may call update()"
            )
        return None
    acc.all_reduce(reduce_group)
    return acc.compute()


def broadcast_metrics(metrics: dict | None, src: int, group=None) -> dict:
    """Copy ``metrics`` from global rank ``src`` to every rank of ``group``.

    Collective over ``group`` (default: the world): every member calls it; the
    value passed on ranks other than ``src`` is ignored.
    """
    obj = [metrics if dist.get_rank() == src else None]
    dist.broadcast_object_list(obj, src=src, group=group)
    if obj[0] is None:
        raise RuntimeError(f"rank {src} broadcast no metrics: is it on the last pipeline stage?")
    return obj[0]
