"""Run a Megatron-Bridge script on the CPU: ``torchrun ... tests/megatron_bridge_launch.py SCRIPT ARGS...``.

Test infrastructure only, the Bridge counterpart of ``tests/megatron_cpu_launch.py``: it
installs :mod:`megatron_cpu_shim`, then makes megatron-bridge 0.6 (installed ``--no-deps``)
importable without Transformer Engine, apex or nvidia-resiliency-ext, then runs SCRIPT as
``__main__`` with ARGS. What it does to Bridge's imports, and why:

* ``nvidia_resiliency_ext``: ``training/pretrain.py`` imports ``inprocess.CallWrapper`` (a type
  hint); the only published release breaks megatron-core's own import. A stub package with
  ``__version__`` and ``inprocess.CallWrapper`` stands in (only when none is installed); its
  other subpackages stay absent, so Bridge's ``safe_import`` probes find them missing.
* ``megatron.bridge``, ``megatron.bridge.models`` and ``megatron.bridge.models.conversion`` are
  registered as packages over the installed files *without running their* ``__init__``:
  ``megatron/bridge/__init__.py`` imports every HF conversion bridge, and the other two reach
  Transformer Engine through ``conversion.auto_bridge`` -> ``peft_bridge`` -> ``peft.lora_layers``
  (``data/builders/direct_hf_sft.py`` imports ``models.hf_pretrained``, which imports
  ``models.conversion.transformers_compat``). Their re-exports (``from
  megatron.bridge.models import GPTModelProvider``) are resolved lazily, on first access, from
  the ``from ... import`` statements of the real ``__init__``.
* ``megatron.bridge.peft.lora`` (imported by ``training/utils/flop_utils.py`` for an
  ``isinstance`` test) imports ``peft.lora_layers`` (Transformer Engine): a stub module whose
  ``LoRA`` class nothing is an instance of.

Test probes, off unless their variable is set (as in ``megatron_cpu_launch.py``):

* ``HESNR_E2E_TRACE=PATH``: every rank appends ``{"rank", "iteration", "losses", "grad_norm"}``
  per training step (Bridge's ``training_log``) to ``PATH.<rank>``, numbers as ``float.hex``;
* ``HESNR_E2E_LEAK_RNG=1``: after each HE-SNR evaluation, draw once from the RNG the training's
  dropout uses, outside the callback's state guard (the negative control of the bit-identity test);
* ``HESNR_E2E_TIMING=PATH``: write the seconds spent importing Bridge and running SCRIPT to
  ``PATH.<rank>`` (JSON);
* ``HESNR_E2E_SECOND_CAPTURE=CAPTURE``: the first HE-SNR evaluation again with that logits capture, its
  records in ``<jsonl>.<CAPTURE>`` (:func:`megatron_cpu_shim.second_capture`);
* ``HESNR_E2E_HOLD_AFTER_START=DIR``: in a restart of a Slurm job (``SLURM_RESTART_COUNT`` >= 1)
  while ``DIR/released`` does not exist, once the callback's ``on_train_start`` (its evaluation at
  start) has returned, write ``DIR/held.<rank>`` and wait, before the first training step, so a
  test can end the job there (no newer checkpoint than the one it started from); the process
  exits when its torchrun is gone (it ignores SIGTERM: Bridge's exit handler);
* ``HESNR_E2E_HOLD_FOR_SIGNAL=ITER:DIR``: in the first start of a job (``SLURM_RESTART_COUNT`` 0 or
  unset), once training step ITER has run and before Bridge decides whether to save and exit, write
  ``DIR/signal_wait.<rank>`` and wait until Bridge's exit-signal handler has received its signal, so a
  test's preemption lands at ITER however slowly the signal travels on a loaded machine.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_cpu_shim  # noqa: E402

megatron_cpu_shim.install()

#: Packages whose ``__init__`` reaches Transformer Engine or every HF bridge: registered bare.
#: (``megatron.bridge.recipes`` imports every model family's recipes: the NeMo-Run launcher imports
#: ``recipes.run_plugins`` from it; the tests name their recipe as ``module:function``.)
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


def _register_bare(name: str) -> None:
    """``name`` as a package over its installed files, ``__init__`` not run, re-exports lazy."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"megatron_bridge_launch: {name} is not installed")
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
        _register_bare(name)
    _stub_lora()
    del megatron


def _hex(x):
    if x is None:
        return None
    if hasattr(x, "numel") and x.numel() == 2:  # Bridge keeps [sum, count] pairs for some losses
        x = x[0] / x[1]
    return float(x.item() if hasattr(x, "item") else x).hex()


def _trace(path: str) -> None:
    import inspect

    import megatron.bridge.training.train as tr

    orig = tr.training_log
    sig = inspect.signature(orig)
    rank = int(os.environ.get("RANK", "0"))

    def training_log(*a, **k):
        b = sig.bind(*a, **k)
        iteration = b.arguments["global_state"].train_state.step
        losses = {key: _hex(v) for key, v in sorted((b.arguments.get("loss_dict") or {}).items())}
        with open(f"{path}.{rank}", "a") as f:
            f.write(json.dumps({"rank": rank, "iteration": iteration, "losses": losses,
                                "grad_norm": _hex(b.arguments.get("grad_norm"))}) + "\n")
        return orig(*a, **k)

    tr.training_log = training_log


def _leak_rng() -> None:
    import torch

    from megatron_hesnr.bridge.callback import HESNRBridgeAdapter

    orig = HESNRBridgeAdapter._evaluate

    def leaky(self, context):
        out = orig(self, context)
        torch.rand(1)  # the CPU generator is the "CUDA" one dropout draws from
        return out

    HESNRBridgeAdapter._evaluate = leaky


def _hold_after_start(directory: str) -> None:
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1 or os.path.exists(os.path.join(directory, "released")):
        return
    from megatron_hesnr.bridge.callback import HESNRBridgeAdapter

    orig = HESNRBridgeAdapter.on_train_start

    def on_train_start(self, context):
        orig(self, context)
        parent = os.getppid()
        with open(os.path.join(directory, f"held.{os.environ.get('RANK', '0')}"), "w") as f:
            f.write(str(time.time()))
        deadline = time.monotonic() + 900
        while os.getppid() == parent and time.monotonic() < deadline:   # until torchrun is gone
            time.sleep(0.5)
        os._exit(1)

    HESNRBridgeAdapter.on_train_start = on_train_start


def _hold_for_signal(spec: str) -> None:
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) >= 1:
        return
    step, _, directory = spec.partition(":")
    import megatron.bridge.training.train as bridge_train

    orig = bridge_train.checkpoint_and_decide_exit

    def checkpoint_and_decide_exit(state, *args, **kwargs):
        handler = getattr(state, "signal_handler", None)
        if state.train_state.step == int(step) and handler is not None:
            with open(os.path.join(directory, f"signal_wait.{os.environ.get('RANK', '0')}"), "w") as f:
                f.write(str(time.time()))
            deadline = time.monotonic() + 900
            while not handler._signal_received and time.monotonic() < deadline:
                time.sleep(0.2)
        return orig(state, *args, **kwargs)

    bridge_train.checkpoint_and_decide_exit = checkpoint_and_decide_exit


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: megatron_bridge_launch.py SCRIPT [ARGS...]")
    script = os.path.abspath(sys.argv[1])
    t0 = time.perf_counter()
    install_bridge_imports()
    import megatron.bridge.training.pretrain  # noqa: F401  (the import time is reported apart)

    t1 = time.perf_counter()
    if os.environ.get("HESNR_E2E_TRACE"):
        _trace(os.environ["HESNR_E2E_TRACE"])
    if os.environ.get("HESNR_E2E_LEAK_RNG") == "1":
        _leak_rng()
    if os.environ.get("HESNR_E2E_SECOND_CAPTURE"):
        megatron_cpu_shim.second_capture(os.environ["HESNR_E2E_SECOND_CAPTURE"])
    if os.environ.get("HESNR_E2E_HOLD_AFTER_START"):
        _hold_after_start(os.environ["HESNR_E2E_HOLD_AFTER_START"])
    if os.environ.get("HESNR_E2E_HOLD_FOR_SIGNAL"):
        _hold_for_signal(os.environ["HESNR_E2E_HOLD_FOR_SIGNAL"])
    sys.argv = [script, *sys.argv[2:]]
    sys.path.insert(0, os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if os.environ.get("HESNR_E2E_TIMING"):
            with open(f"{os.environ['HESNR_E2E_TIMING']}.{os.environ.get('RANK', '0')}", "w") as f:
                json.dump({"import_bridge_s": t1 - t0, "script_s": time.perf_counter() - t1}, f)


if __name__ == "__main__":
    main()
