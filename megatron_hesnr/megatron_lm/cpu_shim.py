"""megatron-core's schedules and ``GPTModel`` (local spec) on CPU / gloo, for dry runs.

Some megatron-core modules allocate on ``"cuda"`` and fork the CUDA RNG tracker in the
code paths an evaluation pass runs.  :func:`schedules_on_cpu` maps those allocations to
the CPU and makes the tracker fork a no-op (so it is only right for dropout-free passes),
which lets the test suite and ``benchmarks/gpu_check_integration.py --cpu`` drive the
real schedules without a GPU.  Not for training runs.
"""
from __future__ import annotations

import contextlib
import importlib

import torch


class _CudaOnCpu:
    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    def current_device(self):
        return "cpu"

    def synchronize(self, *a, **k):
        pass


_FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "rand", "randn", "randint"}


def _on_cpu(fn):
    def call(*a, **k):
        if str(k.get("device", "")).startswith("cuda"):
            k["device"] = "cpu"
        return fn(*a, **k)

    return call


class _TorchOnCpu:
    """``torch`` for megatron-core modules, with ``device="cuda"`` mapped to the CPU."""

    cuda = _CudaOnCpu()

    def __getattr__(self, name):
        f = getattr(torch, name)
        return _on_cpu(f) if name in _FACTORIES else f


#: megatron-core modules that allocate on "cuda" in the code paths the tests run.
_CUDA_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.utils",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.moe.router",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.moe.token_dispatcher",
    "megatron.core.transformer.moe.experts",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
)


@contextlib.contextmanager
def schedules_on_cpu():
    """Run megatron-core's real schedules and GPTModel (local spec) on CPU/gloo.

    Those modules allocate on ``"cuda"`` and fork the CUDA RNG tracker;
    here allocations go to the CPU and the tracker fork is a no-op (dropout is 0).
    """
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    mods = [importlib.import_module(m) for m in _CUDA_MODULES]
    saved = [m.torch for m in mods]
    tracker = get_cuda_rng_tracker()
    saved_fork = tracker.__dict__.get("fork")
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    missing_gemm = not hasattr(moe_utils, "te_general_gemm")
    for m in mods:
        m.torch = _TorchOnCpu()
    tracker.fork = lambda *a, **k: contextlib.nullcontext()
    if missing_gemm:  # core 0.16 leaves it undefined without Transformer Engine
        moe_utils.te_general_gemm = None
    try:
        yield
    finally:
        for m, t in zip(mods, saved):
            m.torch = t
        if saved_fork is None:
            del tracker.fork
        else:
            tracker.fork = saved_fork
        if missing_gemm:
            del moe_utils.te_general_gemm
