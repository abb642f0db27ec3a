"""Make CUDA look present so Megatron-LM's real ``pretrain()`` runs on the CPU over gloo.

Test infrastructure only (never imported by the package). ``install()`` must run
before ``megatron`` is imported; ``tests/megatron_launch.py`` does that in every
process torchrun starts. What it changes, and why:

* ``torch.cuda``: ``is_available`` True and ``device_count`` >= 1 (Megatron builds no
  model-parallel groups without a device); ``set_device``, ``synchronize``, ``empty_cache``,
  memory statistics, device properties, NVTX ranges, streams and events are inert;
  ``current_device`` is the local rank (also the name ``torch.cuda.random`` imported).
* The "CUDA" RNG *is* the CPU generator: ``get/set_rng_state``, ``manual_seed`` and
  ``default_generators`` point at ``torch.default_generator``, so Megatron's RNG tracker
  forks the generator CPU dropout actually draws from; ``_lazy_call`` runs at once.
* ``torch.accelerator.current_accelerator()`` is None (nothing asks a missing driver).
* ``torch._dynamo`` is disabled (Megatron warms up compiled fusions even with ``--no-*-fusion``).
* A ``TorchFunctionMode`` sends every ``device="cuda"`` / ``"cuda:N"`` / ``torch.device('cuda')``
  / integer device, and ``Tensor.to(<cuda>)``, to the CPU; ``Tensor.cuda()`` and
  ``pin_memory()`` return the tensor; ``Tensor.type()`` names ``torch.cuda.*`` types (an
  assert in ``clip_grads.py`` checks it).
* DataLoader iterators are created with the CPU RNG state saved and restored: their seed
  draw happens on tensor-parallel rank 0 only (the rank that reads data), and on a GPU it
  comes from the CPU generator, not the CUDA one dropout uses; here both are one generator,
  and the draw would desynchronise dropout in replicated regions across TP ranks.
* Resuming the distributed optimizer with torch's Adam (no Apex/TE) first gives the optimizer
  its states (megatron-core 0.19 asserts otherwise; it does the same for fsdp_dtensor), and
  after the load gives each parameter its own Adam step with the checkpoint's value
  (megatron-core 0.19.2 restores the dummy step, shared by all parameters: see
  ``_resume_torch_adam``).
* The alltoall MoE dispatcher's split sizes reach gloo as numpy arrays, as they reach NCCL
  from a GPU (they stayed CPU tensors, which gloo refuses): expert parallelism runs.
* ``compile_helpers`` is skipped when ``megatron.core.datasets.helpers_cpp`` imports (the
  wheel ships it compiled).

Launch flags that go with it: ``--transformer-impl local --distributed-backend gloo
--no-gradient-accumulation-fusion --no-persist-layer-norm``; ``CUDA_DEVICE_MAX_CONNECTIONS=1``
for TP > 1. Context and sequence parallelism need TE/apex layers: out of reach here.
"""
from __future__ import annotations

import contextlib
import os
import types

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

_CPU = torch.device("cpu")
_installed = False


def _is_cuda(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.split(":")[0] == "cuda"
    return False


class _CpuPlacement(TorchFunctionMode):
    """Every CUDA placement requested through a torch function lands on the CPU."""

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        dev = kwargs.get("device")
        if dev is not None and (_is_cuda(dev) or (isinstance(dev, int) and not isinstance(dev, bool))):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to and len(args) > 1:
            a1 = args[1]
            if _is_cuda(a1) or (isinstance(a1, int) and not isinstance(a1, bool)):
                args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


class _Stream:
    def __init__(self, *a, **k):
        self.device = _CPU

    def wait_stream(self, *a, **k):
        pass

    def wait_event(self, *a, **k):
        pass

    def record_event(self, event=None):
        return event or _Event()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Event:
    def __init__(self, *a, **k):
        pass

    def record(self, *a, **k):
        pass

    def wait(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _props(*_a, **_k):
    return types.SimpleNamespace(name="cpu (megatron_cpu_shim)", total_memory=64 << 30, major=9, minor=0,
                                 multi_processor_count=1, uuid="cpu-shim", is_integrated=False)


def _install_cuda():
    cuda = torch.cuda
    n = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    noop = lambda *a, **k: None  # noqa: E731
    zero = lambda *a, **k: 0  # noqa: E731
    gen = torch.default_generator
    fns = dict(
        is_available=lambda: True, device_count=lambda: n, current_device=lambda: local_rank,
        set_device=noop, synchronize=noop, empty_cache=noop, init=noop, _lazy_init=noop,
        is_initialized=lambda: True, _lazy_call=lambda cb, **k: cb(),
        memory_allocated=zero, max_memory_allocated=zero, memory_reserved=zero, max_memory_reserved=zero,
        reset_peak_memory_stats=noop, reset_max_memory_allocated=noop, memory_stats=lambda *a, **k: {},
        memory_summary=lambda *a, **k: "", mem_get_info=lambda *a, **k: (64 << 30, 64 << 30),
        get_device_properties=_props, get_device_name=lambda *a, **k: "cpu",
        get_device_capability=lambda *a, **k: (9, 0), is_bf16_supported=lambda *a, **k: True,
        Stream=_Stream, Event=_Event, current_stream=lambda *a, **k: _Stream(),
        default_stream=lambda *a, **k: _Stream(), stream=lambda *a, **k: contextlib.nullcontext(),
        device=lambda *a, **k: contextlib.nullcontext(),
        get_rng_state=lambda *a, **k: gen.get_state(), set_rng_state=lambda s, *a, **k: gen.set_state(s),
        get_rng_state_all=lambda: [gen.get_state()], set_rng_state_all=lambda states: gen.set_state(states[0]),
        manual_seed=lambda s: gen.manual_seed(s), manual_seed_all=lambda s: gen.manual_seed(s),
        seed=lambda: gen.seed(), seed_all=lambda: gen.seed(), initial_seed=lambda: gen.initial_seed(),
    )
    for name, fn in fns.items():
        setattr(cuda, name, fn)
    cuda.default_generators = tuple(gen for _ in range(n))
    import torch.cuda.random as cuda_random  # imported its own names: patch them there too

    for name in ("current_device", "device_count", "_lazy_call", "_lazy_init", "get_rng_state", "set_rng_state",
                 "get_rng_state_all", "set_rng_state_all", "manual_seed", "manual_seed_all", "seed", "seed_all",
                 "initial_seed"):
        setattr(cuda_random, name, fns[name])
    cuda.nvtx.range_push = noop
    cuda.nvtx.range_pop = noop
    cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()


def _install_tensor_methods():
    orig_type = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kw):
        if dtype is None:
            name = orig_type(self)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if isinstance(dtype, str):
            dtype = dtype.replace("torch.cuda.", "torch.")
        return orig_type(self, dtype, non_blocking, **kw)

    torch.Tensor.type = type_
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    torch.Tensor.is_pinned = lambda self, *a, **k: False


def _isolate_dataloader_seed():
    from torch.utils.data import dataloader

    orig = dataloader._BaseDataLoaderIter.__init__

    def init(self, *a, **k):
        state = torch.get_rng_state()
        try:
            orig(self, *a, **k)
        finally:
            torch.set_rng_state(state)

    dataloader._BaseDataLoaderIter.__init__ = init


def _skip_compile_helpers():
    try:
        import megatron.core.datasets.helpers_cpp  # noqa: F401
        import megatron.core.datasets.utils as dsu
    except ImportError:
        return
    dsu.compile_helpers = lambda: None


def _resume_torch_adam():
    """Resume the distributed optimizer without Apex/TE (torch's Adam, as here) as Megatron
    does with TE's FusedAdam on a GPU: three faults of megatron-core 0.19.2 on this path.

    1. ``DistributedOptimizer.state_dict`` asserts when the optimizer has no states yet (no
       ``step`` before the first step): before loading, give it its states the way megatron-core
       does for its fsdp_dtensor format (``_init_optimizer_states_with_dummy_values``).
    2. ``load_parameter_state_from_dp_reshardable`` copies every tensor of a parameter's state
       from the load template, ``step`` included: the dummy step (1) overwrites the
       checkpoint's step, which ``load_state_dict`` had just set from ``param_groups``.
    3. ``load_state_dict`` gives every parameter the *same* ``step`` tensor, and torch's Adam
       increments each parameter's step in place: one iteration advances it once per parameter.

    With 2 and 3 a resumed run's Adam bias correction is wrong from the first step after the
    load (at iteration 6 of the Slurm tests, 5e-4 relative in the HE-SNR NLL sum). After each
    ``load_state_dict`` every parameter gets a step tensor of its own with the checkpoint's
    value (``param_groups[*]["step"]``); then a resumed run repeats the uninterrupted one bit
    for bit (``tests/test_slurm_launch.py``). TE's and Apex's Adam keep the step in
    ``param_groups`` and none of this happens on a GPU."""
    try:
        from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE, DistributedOptimizer
    except ImportError:
        return
    if HAVE_APEX_OR_TE:
        return
    orig = DistributedOptimizer.sharded_state_dict

    def sharded_state_dict(self, model_sharded_state_dict={}, is_loading=False, *a, **k):  # noqa: B006
        if is_loading and not self.optimizer.state:
            self._init_optimizer_states_with_dummy_values()
        return orig(self, model_sharded_state_dict, is_loading, *a, **k)

    DistributedOptimizer.sharded_state_dict = sharded_state_dict
    orig_load = DistributedOptimizer.load_state_dict

    def load_state_dict(self, state_dict):
        out = orig_load(self, state_dict)
        groups = (state_dict.get("optimizer") or {}).get("param_groups") or []
        steps = {float(g["step"]) for g in groups if g.get("step") is not None}
        if len(steps) == 1:
            step = steps.pop()
            for state in self.optimizer.state.values():
                if "step" in state:
                    state["step"] = torch.tensor(step, dtype=torch.float32)
        return out

    DistributedOptimizer.load_state_dict = load_state_dict


def _moe_splits_to_host():
    """The alltoall MoE token dispatcher hands ``all_to_all_single`` its split sizes through
    ``maybe_move_tensor_to_cpu(..., as_numpy=True)``, which converts only a *CUDA* tensor (on a
    GPU the splits are copied to the host as numpy arrays); here they are CPU tensors already,
    stay tensors, and gloo's ``all_to_all_single`` refuses tensors as split sizes (TypeError).
    With the CPU as the device, a CPU tensor asked for as numpy is converted, as a device tensor
    would be: expert parallelism runs over gloo."""
    try:
        from megatron.core.transformer.moe import moe_utils
    except ImportError:
        return
    orig = getattr(moe_utils, "maybe_move_tensor_to_cpu", None)
    if orig is None:
        return

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor):
            return tensor.detach().cpu().numpy()
        return orig(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    try:
        from megatron.core.transformer.moe import token_dispatcher
    except ImportError:
        return
    if getattr(token_dispatcher, "maybe_move_tensor_to_cpu", None) is orig:
        token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


def install() -> None:
    """Apply every piece above (idempotent). Call before importing ``megatron``."""
    global _installed
    if _installed:
        return
    _installed = True
    import torch._dynamo as dynamo  # before patching: dynamo indexes the real torch.cuda functions

    dynamo.config.disable = True
    _install_cuda()
    if hasattr(torch, "accelerator"):
        torch.accelerator.current_accelerator = lambda *a, **k: None
    _install_tensor_methods()
    _isolate_dataloader_seed()
    _CpuPlacement().__enter__()  # for the life of the process
    _skip_compile_helpers()
    _resume_torch_adam()
    _moe_splits_to_host()


def second_capture(capture: str) -> None:
    """Test probe ``HESNR_E2E_SECOND_CAPTURE=CAPTURE`` (``tests/megatron_launch.py``): the first HE-SNR evaluation of every
    evaluator is run a second time, on the same weights and ranks, with ``--hesnr-logits-capture CAPTURE``;
    its records go to ``<--hesnr-jsonl>.<CAPTURE>`` and its lines are not printed, so a test compares the two
    captures in every layout a launch runs, without another launch (once per launch: the whole-logits pass
    costs as much as the evaluation itself)."""
    import dataclasses

    from megatron_hesnr.evaluation import evaluator as ev

    evaluate = ev.HESNREvaluator.evaluate

    def both(self, model, ctx):
        due = self.should_run(ctx) and not getattr(self, "_second_capture_done", False)
        out = evaluate(self, model, ctx)
        if not due:
            return out
        self._second_capture_done = True
        saved = (self.config, self.last_iteration, self.capture_line, ev.print_validation_line, ev.print_note)
        cfg = self.config
        self.config = dataclasses.replace(cfg, logits_capture=capture, logits_chunk="auto",
                                          jsonl=f"{cfg.jsonl}.{capture}" if cfg.jsonl else None)
        self.last_iteration = None
        ev.print_validation_line = ev.print_note = lambda *a, **k: None
        try:
            evaluate(self, model, ctx)
        finally:
            self.config, self.last_iteration, self.capture_line, ev.print_validation_line, ev.print_note = saved
        return out

    ev.HESNREvaluator.evaluate = both
