"""The forward-only schedule the demo evaluator runs under.

With megatron-core installed the demo uses megatron-core's own schedule
(``get_forward_backward_func()``, one pipeline stage; its CUDA allocations mapped to the
CPU by :func:`~megatron_hesnr.megatron_lm.cpu_shim.schedules_on_cpu`).  Without it,
:func:`demo_forward_only` stands in: the same contract on one stage, a micro-batch at a
time, ``forward_step_func(data_iterator, model) -> (output, loss_func)`` then
``loss_func(output, non_loss_data=True)`` collected in a list.
"""
from __future__ import annotations

import contextlib


def demo_forward_only(*, forward_step_func, data_iterator, model, num_microbatches: int,
                      forward_only: bool = True, collect_non_loss_data: bool = False, **_schedule_shape):
    """The demo's stand-in for megatron-core's forward-only schedule (one stage, no pipeline)."""
    if not forward_only:
        raise ValueError("the demo's schedule runs forward passes only")
    chunks = model if isinstance(model, (list, tuple)) else [model]
    iterators = data_iterator if isinstance(data_iterator, (list, tuple)) else [data_iterator]
    if len(chunks) != 1:
        raise ValueError(f"the demo's schedule runs one model chunk, got {len(chunks)}")
    collected = []
    for _ in range(num_microbatches):
        output, loss_func = forward_step_func(iterators[0], chunks[0])
        collected.append(loss_func(output, non_loss_data=True) if collect_non_loss_data else loss_func(output))
    return collected


def schedule(megatron: bool):
    """``(forward_backward_func, context manager to run it in)`` for this installation."""
    if not megatron:
        return demo_forward_only, contextlib.nullcontext()
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ..megatron_lm.cpu_shim import schedules_on_cpu

    return get_forward_backward_func(), schedules_on_cpu()
