"""This rank's :class:`~megatron_hesnr.evaluation.topology.Topology`, read from megatron-core's
global ``parallel_state`` (the groups Megatron-LM's ``initialize_megatron`` builds).

The one place that reads those globals; everything below receives the topology explicitly.
"""
from __future__ import annotations

import logging

from ..evaluation.topology import Topology, default_device, megatron_cp_split

log = logging.getLogger(__name__)


def _is_last_stage(ps) -> bool:
    try:
        # The last stage of the real pipeline, whatever virtual chunk is current:
        # the metric is reduced after the whole evaluation, not per model chunk.
        return bool(ps.is_pipeline_last_stage(ignore_virtual=True))
    except TypeError:  # older signature without ignore_virtual
        return bool(ps.is_pipeline_last_stage())


def topology_from_parallel_state(device=None) -> Topology:
    """This rank's place in megatron-core's initialized ``parallel_state`` groups."""
    try:
        from megatron.core import parallel_state as ps
    except ImportError as e:
        raise ImportError("topology_from_parallel_state needs megatron-core (pip install megatron-core)") from e
    if not ps.model_parallel_is_initialized():
        raise RuntimeError(
            "megatron.core.parallel_state is not initialized: call "
            "parallel_state.initialize_model_parallel(...) (Megatron's initialize_megatron does) "
            "before building the HE-SNR topology, or pass a Topology explicitly"
        )
    tp_size = ps.get_tensor_model_parallel_world_size()
    dp_cp_size = ps.get_data_parallel_world_size(with_context_parallel=True)
    cp_size = ps.get_context_parallel_world_size()
    topo = Topology(
        tp_group=ps.get_tensor_model_parallel_group() if tp_size > 1 else None,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=tp_size,
        tp_src=ps.get_tensor_model_parallel_src_rank(),
        reduce_group=ps.get_data_parallel_group(with_context_parallel=True) if dp_cp_size > 1 else None,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        cp_rank=ps.get_context_parallel_rank(),
        cp_size=cp_size,
        is_last_stage=_is_last_stage(ps),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        cp_split=megatron_cp_split(ps.get_context_parallel_group()) if cp_size > 1 else None,
        device=default_device() if device is None else device,
    )
    log.debug("HE-SNR topology: tp=%d dp_cp=%d cp=%d/%d last_stage=%s", tp_size, dp_cp_size, topo.cp_rank, cp_size,
              topo.is_last_stage)
    return topo
