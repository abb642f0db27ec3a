"""One evaluation pass over one set through megatron-core's real schedule, outside the hook.

For benchmarks and tests that time or check the pass alone: the topology comes from
Megatron's ``parallel_state`` (initialised by the caller), the schedule from
``get_forward_backward_func``.
"""
from __future__ import annotations

import torch


def run_pass(model: list, wset, cfg, *, vocab: int, padded_vocab: int, seq_length: int):
    """One ``HESNRPass`` through megatron-core's real ``get_forward_backward_func`` schedule
    (interleaved when ``model`` has several chunks); returns ``(accumulator, bucket plan)``."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ..evaluation.capture import LogitsCapture, resolve_capture
    from ..evaluation.eval_pass import HESNRPass
    from .topology import topology_from_parallel_state

    p = HESNRPass(cfg, vocab_size=vocab, seq_length=seq_length, topology=topology_from_parallel_state(),
                  forward_backward_func=get_forward_backward_func(),
                  capture=LogitsCapture(resolve_capture(model[-1], cfg.logits_capture)), padded_vocab_size=padded_vocab)
    for m in model:
        m.eval()
    with torch.no_grad():
        acc = p.run(model, wset)
    return acc, p.plan
