"""Run a Megatron-LM entry script or a Megatron-Bridge script on the CPU under torchrun:
``torchrun ... tests/megatron_launch.py [--bridge] SCRIPT ARGS...``.

Test infrastructure only (never imported by the package). In every process torchrun starts it
installs :mod:`megatron_cpu_shim` (CUDA made to look present), with ``--bridge`` also Bridge's
import workarounds (below), imports the framework's training loop (timed apart), installs the
test probes whose variables are set, then runs SCRIPT as ``__main__`` with ARGS. The Slurm tests
reach the processes their jobs start through ``tests/slurm_sitecustomize.py``, which calls
:func:`install` and :func:`install_probes` the same way (no script to run there).

Bridge import workarounds (``--bridge``; megatron-bridge 0.6 installed ``--no-deps``, no
Transformer Engine, apex or nvidia-resiliency-ext), and why:

* ``nvidia_resiliency_ext``: ``training/pretrain.py`` imports ``inprocess.CallWrapper`` (a type
  hint); the only published release breaks megatron-core's own import. A stub package with
  ``__version__`` and ``inprocess.CallWrapper`` stands in (only when none is installed); its
  other subpackages stay absent, so Bridge's ``safe_import`` probes find them missing.
* ``megatron.bridge``, ``megatron.bridge.models``, ``megatron.bridge.models.conversion`` and
  ``megatron.bridge.recipes`` are registered as packages over the installed files *without running
  their* ``__init__`` (:func:`register_bare`): ``megatron/bridge/__init__.py`` imports every HF
  conversion bridge, the two ``models`` ones reach Transformer Engine through
  ``conversion.auto_bridge`` -> ``peft_bridge`` -> ``peft.lora_layers`` (``data/builders/direct_hf_sft.py``
  imports ``models.hf_pretrained``, which imports ``models.conversion.transformers_compat``), and
  ``recipes`` imports every model family's recipes (the NeMo-Run example imports
  ``recipes.run_plugins``; the tests name their recipe as ``module:function``). Their re-exports
  (``from megatron.bridge.models import GPTModelProvider``) are resolved lazily, on first access,
  from the ``from ... import`` statements of the real ``__init__``.
* ``megatron.bridge.peft.lora`` (imported by ``training/utils/flop_utils.py`` for an ``isinstance``
  test) imports ``peft.lora_layers`` (Transformer Engine): a stub module whose ``LoRA`` class nothing
  is an instance of.

Test probes, off unless their variable is set; each names the launches it serves, and one set for
a launch it does not serve stops the launch with one line:

* ``HESNR_E2E_TRACE=PATH`` (both): every rank appends ``{"rank", "iteration", "losses", "grad_norm"}``
  per training step (the framework's ``training_log``) to ``PATH.<rank>``, numbers as ``float.hex``
  (bit-exact comparisons; a ``[sum, count]`` loss as their quotient);
* ``HESNR_E2E_SECOND_CAPTURE=CAPTURE`` (both): the first HE-SNR evaluation again with that logits
  capture, its records in ``<jsonl>.<CAPTURE>`` (:func:`megatron_cpu_shim.second_capture`);
* ``HESNR_E2E_LEAK_RNG=1`` (both): after each HE-SNR evaluation, draw once from the RNG the training's
  dropout uses, outside the evaluator's state guard: the negative control showing that the
  bit-identity comparison catches an evaluation that disturbs training;
* ``HESNR_E2E_SLOW_PASS=ITERATION:SECONDS:DIR:RESTART`` (both): in the start RESTART of a Slurm job
  (``SLURM_RESTART_COUNT``, 0 if unset), the HE-SNR evaluation at ITERATION scores and writes its
  records, then writes ``DIR/pass-started.<rank>`` and sleeps SECONDS before returning, so that a
  test can requeue the job inside the evaluation, after the records are on disk and before the
  checkpoint of that iteration;
* ``HESNR_E2E_HOLD_AFTER_START=DIR`` (both): in a restart of a Slurm job (``SLURM_RESTART_COUNT`` >= 1)
  while ``DIR/released`` does not exist, once the front end's evaluation at start has returned (Bridge:
  the callback's ``on_train_start``), write ``DIR/held.<rank>`` and wait, before the first training
  step, so a test can end the job there (no newer checkpoint than the one it started from); the
  process exits when its torchrun is gone (it ignores SIGTERM: Bridge's exit handler);
* ``HESNR_E2E_HOLD_FOR_SIGNAL=ITER:DIR`` (Bridge): in the first start of a job (``SLURM_RESTART_COUNT``
  0 or unset), once training step ITER has run and before Bridge decides whether to save and exit,
  write ``DIR/signal_wait.<rank>`` and wait until Bridge's exit-signal handler has received its
  signal, so a test's preemption lands at ITER however slowly the signal travels on a loaded machine;
* ``HESNR_E2E_TIMING=PATH`` (both): write the seconds spent importing the framework's training loop
  and running SCRIPT to ``PATH.<rank>`` (JSON ``{"import_s", "script_s"}``).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import runpy
import sys
import time
import types
from dataclasses import dataclass
from typing import Callable

TESTS = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Flavour:
    """Where one framework keeps what the probes wrap."""

    name: str
    framework: str                     # imported (and timed) before the script
    training: str                      # module of ``training_log`` (and Bridge's ``checkpoint_and_decide_exit``)
    step: Callable[[dict], int]        # the iteration, from ``training_log``'s bound arguments
    front_end: tuple[str, str, str]    # (module, class, method) of the HE-SNR evaluation at start


MEGATRON_LM = Flavour(
    "Megatron-LM", framework="megatron.training.training", training="megatron.training.training",
    step=lambda arguments: arguments["iteration"],
    front_end=("megatron_hesnr.megatron_lm.hook", "MegatronHESNRHook", "evaluate_at_start"))
BRIDGE = Flavour(
    "Megatron-Bridge", framework="megatron.bridge.training.pretrain", training="megatron.bridge.training.train",
    step=lambda arguments: arguments["global_state"].train_state.step,
    front_end=("megatron_hesnr.bridge.callback", "HESNRBridgeAdapter", "on_train_start"))


# ----------------------------------------------------------------- Bridge's imports on the CPU

#: Packages whose ``__init__`` reaches Transformer Engine or every HF bridge: registered bare.
BARE_PACKAGES = ("megatron.bridge", "megatron.bridge.models", "megatron.bridge.models.conversion",
                 "megatron.bridge.recipes")


def _stub_resiliency_ext() -> None:
    if importlib.util.find_spec("nvidia_resiliency_ext") is not None:
        return
    pkg = types.ModuleType("nvidia_resiliency_ext")
    pkg.__version__ = "0.0.0+hesnr-test-stub"
    pkg.__path__ = []  # a package: ``import nvidia_resiliency_ext.x`` fails with ModuleNotFoundError
    inprocess = types.ModuleType("nvidia_resiliency_ext.inprocess")

    class CallWrapper:  # only a type hint in pretrain.py; in-process restart stays off
        iteration = 0

    inprocess.CallWrapper = CallWrapper
    pkg.inprocess = inprocess
    sys.modules["nvidia_resiliency_ext"] = pkg
    sys.modules["nvidia_resiliency_ext.inprocess"] = inprocess


def _reexports(init_file: str, package: str) -> dict[str, tuple[str, str]]:
    """``{exported name: (module, attribute)}`` from the ``from X import a as b`` lines of an ``__init__``."""
    with open(init_file, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
        for alias in node.names:
            if alias.name != "*":
                out[alias.asname or alias.name] = (module, alias.name)
    return out


def register_bare(name: str) -> types.ModuleType:
    """``name`` as a package over its installed files, ``__init__`` not run, re-exports lazy.
    (Also the unit tests' way to import Bridge 0.3's callbacks without Transformer Engine:
    ``hesnr_bridge_helpers.import_bridge``.)"""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"megatron_launch: {name} is not installed")
    mod = types.ModuleType(name)
    mod.__path__ = list(spec.submodule_search_locations)
    mod.__file__, mod.__spec__, mod.__package__ = spec.origin, spec, name
    exports = _reexports(spec.origin, name)

    def __getattr__(attr, _name=name, _exports=exports):
        if attr in _exports:
            module, obj = _exports[attr]
            value = getattr(importlib.import_module(module), obj)
            setattr(sys.modules[_name], attr, value)
            return value
        try:
            return importlib.import_module(f"{_name}.{attr}")
        except ModuleNotFoundError:
            raise AttributeError(f"module {_name!r} has no attribute {attr!r}") from None

    mod.__getattr__ = __getattr__
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, mod)
    return mod


def _stub_lora() -> None:
    import megatron.bridge.peft  # an empty __init__: imports as it is

    lora = types.ModuleType("megatron.bridge.peft.lora")
    lora.__doc__ = "Test stub: the real module imports Transformer Engine; no PEFT runs in these tests."

    class LoRA:
        pass

    LoRA.__module__ = lora.__name__
    lora.LoRA = LoRA
    sys.modules[lora.__name__] = lora
    megatron.bridge.peft.lora = lora


def install_bridge_imports() -> None:
    """Everything above; Bridge's real ``__init__`` runs instead when Transformer Engine is installed."""
    _stub_resiliency_ext()
    if importlib.util.find_spec("transformer_engine") is not None:
        return
    import megatron  # a namespace-style package of megatron-core and megatron-bridge

    for name in BARE_PACKAGES:
        register_bare(name)
    _stub_lora()
    del megatron


# ----------------------------------------------------------------- probes

def _rank() -> str:
    return os.environ.get("RANK", "0")


def _restart() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _mark(directory: str, stem: str) -> None:
    with open(os.path.join(directory, f"{stem}.{_rank()}"), "w") as f:
        f.write(str(time.time()))


def _wrap(owner, method: str, make) -> None:
    """``owner.method = make(original)``."""
    setattr(owner, method, make(getattr(owner, method)))


def _evaluator():
    from megatron_hesnr.evaluation.evaluator import HESNREvaluator

    return HESNREvaluator


def _hex(x):
    if x is None:
        return None
    if isinstance(x, (tuple, list)) or (hasattr(x, "numel") and x.numel() == 2):  # a [sum, count] pair
        x = x[0] / x[1]
    return float(x.item() if hasattr(x, "item") else x).hex()


def _trace(flavour: Flavour, path: str) -> None:
    import inspect

    training = importlib.import_module(flavour.training)
    sig = inspect.signature(training.training_log)

    def make(orig):
        def training_log(*a, **k):
            arguments = sig.bind(*a, **k).arguments
            losses = {key: _hex(v) for key, v in sorted((arguments.get("loss_dict") or {}).items())}
            with open(f"{path}.{_rank()}", "a") as f:
                f.write(json.dumps({"rank": int(_rank()), "iteration": flavour.step(arguments), "losses": losses,
                                    "grad_norm": _hex(arguments.get("grad_norm"))}) + "\n")
            return orig(*a, **k)

        return training_log

    _wrap(training, "training_log", make)


def _second_capture(flavour: Flavour, capture: str) -> None:
    import megatron_cpu_shim

    megatron_cpu_shim.second_capture(capture)


def _leak_rng(flavour: Flavour, value: str) -> None:
    import torch

    def make(orig):
        def leaky(self, model, ctx):
            out = orig(self, model, ctx)
            torch.rand(1)  # the CPU generator is the "CUDA" one dropout draws from
            return out

        return leaky

    _wrap(_evaluator(), "evaluate", make)


def _slow_pass(flavour: Flavour, spec: str) -> None:
    iteration, seconds, rest = (spec.split(":", 2) + ["", "", ""])[:3]
    directory, _, restart = rest.rpartition(":")
    if _restart() != int(restart):
        return

    def make(orig):
        def slow(self, model, ctx):
            out = orig(self, model, ctx)
            if ctx.iteration == int(iteration):
                _mark(directory, "pass-started")
                time.sleep(float(seconds))
            return out

        return slow

    _wrap(_evaluator(), "evaluate", make)


def _hold_after_start(flavour: Flavour, directory: str) -> None:
    if _restart() < 1 or os.path.exists(os.path.join(directory, "released")):
        return
    module, cls, method = flavour.front_end

    def make(orig):
        def held(self, *a, **k):
            orig(self, *a, **k)
            parent = os.getppid()
            _mark(directory, "held")
            deadline = time.monotonic() + 900
            while os.getppid() == parent and time.monotonic() < deadline:   # until torchrun is gone
                time.sleep(0.5)
            os._exit(1)

        return held

    _wrap(getattr(importlib.import_module(module), cls), method, make)


def _hold_for_signal(flavour: Flavour, spec: str) -> None:
    if _restart() >= 1:
        return
    step, _, directory = spec.partition(":")

    def make(orig):
        def checkpoint_and_decide_exit(state, *args, **kwargs):
            handler = getattr(state, "signal_handler", None)
            if state.train_state.step == int(step) and handler is not None:
                _mark(directory, "signal_wait")
                deadline = time.monotonic() + 900
                while not handler._signal_received and time.monotonic() < deadline:
                    time.sleep(0.2)
            return orig(state, *args, **kwargs)

        return checkpoint_and_decide_exit

    _wrap(importlib.import_module(flavour.training), "checkpoint_and_decide_exit", make)


#: ``{variable: (probe, the launches it serves)}``, installed in this order (the probes that wrap the
#: evaluator after the second capture, so they act once per evaluation).
PROBES: dict[str, tuple[Callable[[Flavour, str], None], tuple[Flavour, ...]]] = {
    "HESNR_E2E_TRACE": (_trace, (MEGATRON_LM, BRIDGE)),
    "HESNR_E2E_SECOND_CAPTURE": (_second_capture, (MEGATRON_LM, BRIDGE)),
    "HESNR_E2E_LEAK_RNG": (_leak_rng, (MEGATRON_LM, BRIDGE)),
    "HESNR_E2E_SLOW_PASS": (_slow_pass, (MEGATRON_LM, BRIDGE)),
    "HESNR_E2E_HOLD_AFTER_START": (_hold_after_start, (MEGATRON_LM, BRIDGE)),
    "HESNR_E2E_HOLD_FOR_SIGNAL": (_hold_for_signal, (BRIDGE,)),
}


def install_probes(flavour: Flavour) -> None:
    for variable, (probe, flavours) in PROBES.items():
        value = os.environ.get(variable)
        if not value:
            continue
        if flavour not in flavours:
            raise SystemExit(f"megatron_launch: {variable} is a probe of {' and '.join(f.name for f in flavours)} "
                             f"launches only, not of a {flavour.name} launch")
        probe(flavour, value)


# ----------------------------------------------------------------- launching

def install(flavour: Flavour) -> None:
    """The CPU shim (before anything imports ``megatron``), then Bridge's import workarounds."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import megatron_cpu_shim

    megatron_cpu_shim.install()
    if flavour is BRIDGE:
        install_bridge_imports()


def main(argv: list[str]) -> None:
    bridge = argv[:1] == ["--bridge"]
    argv = argv[1:] if bridge else argv
    if not argv:
        raise SystemExit("usage: megatron_launch.py [--bridge] SCRIPT [ARGS...]")
    script = os.path.abspath(argv[0])
    flavour = BRIDGE if bridge else MEGATRON_LM
    install(flavour)
    t0 = time.perf_counter()
    importlib.import_module(flavour.framework)
    t1 = time.perf_counter()
    install_probes(flavour)
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if os.environ.get("HESNR_E2E_TIMING"):
            with open(f"{os.environ['HESNR_E2E_TIMING']}.{_rank()}", "w") as f:
                json.dump({"import_s": t1 - t0, "script_s": time.perf_counter() - t1}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
