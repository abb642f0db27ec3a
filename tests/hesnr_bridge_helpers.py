"""Megatron-Bridge's real callback objects on CPU, and stand-ins for what cannot run there.

Real (from the installed ``megatron-bridge`` wheel, ``pip install --no-deps``):
``Callback``, ``CallbackContext``, ``CallbackManager`` / ``normalize_callbacks``
(``megatron.bridge.training.callbacks``) and ``get_pg_collection``
(``megatron.bridge.training.utils.pg_utils``), the modules the callback uses.

Not importable on CPU: ``megatron/bridge/__init__.py`` imports ``AutoBridge``, whose
chain needs ``transformers`` and ``transformer_engine`` (CUDA only).  So, when that
import fails, :func:`import_bridge` registers ``megatron.bridge`` as a bare package
over the installed files (its ``__init__`` skipped) and imports the submodules
normally (:func:`megatron_launch.register_bare`, as the CPU launcher does for a Bridge
script).  ``GlobalState`` (needs tensorboard, timers, signal handlers) and
``ConfigContainer`` (its model providers need Transformer Engine) are replaced by
plain objects with the attributes Bridge's ``evaluate()`` reads.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import SimpleNamespace

import pytest
from conftest import IN_CI
from megatron_launch import register_bare


def import_bridge():
    """``(callbacks module, pg_utils module, shimmed: bool)``; skips (fails in CI) without the wheel."""
    try:
        spec = importlib.util.find_spec("megatron.bridge")
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        msg = "megatron-bridge is not installed (pip install --no-deps megatron-bridge==0.3.1)"
        if IN_CI:
            pytest.fail(msg + ": CI must install it")
        pytest.skip(msg)
    before = set(sys.modules)
    shimmed = False
    try:
        if importlib.util.find_spec("transformer_engine") is None:
            # The package __init__ cannot import without it; do not pay for the attempt.
            raise ImportError("transformer_engine")
        callbacks = importlib.import_module("megatron.bridge.training.callbacks")
    except ImportError:
        for name in set(sys.modules) - before:
            if name == "megatron.bridge" or name.startswith("megatron.bridge."):
                del sys.modules[name]
        register_bare("megatron.bridge")
        shimmed = True
        callbacks = importlib.import_module("megatron.bridge.training.callbacks")
    pg_utils = importlib.import_module("megatron.bridge.training.utils.pg_utils")
    return callbacks, pg_utils, shimmed


def bridge_callbacks():
    """Body of a module-scoped fixture: Bridge's callbacks module, its shimmed modules dropped after."""
    callbacks, _, shimmed = import_bridge()
    yield callbacks
    if shimmed:
        drop_bridge_modules()


def drop_bridge_modules():
    for name in list(sys.modules):
        if name == "megatron.bridge" or name.startswith("megatron.bridge."):
            del sys.modules[name]
    import megatron_hesnr.bridge.callback as cb

    cb._CALLBACK_CLASS = None


def container(*, seq_length, eval_interval=2, eval_iters=1, skip_train=False, save="/ckpt/runB", load=None,
              ckpt_step=None, cp=1, mtp=None, bridge03=False, vp=None):
    """A ``ConfigContainer`` look-alike: 0.4+ layout (``validation``) or 0.3 (``train`` only)."""
    val = SimpleNamespace(eval_interval=eval_interval, eval_iters=eval_iters, skip_train=skip_train)
    cfg = SimpleNamespace(
        model=SimpleNamespace(seq_length=seq_length, mtp_num_layers=mtp, context_parallel_size=cp,
                              virtual_pipeline_model_parallel_size=vp),
        checkpoint=SimpleNamespace(save=save, load=load, ckpt_step=ckpt_step),
        dataset=SimpleNamespace(create_attention_mask=False),
    )
    if bridge03:
        cfg.train = val
    else:
        cfg.validation = val
        # 0.4+ keep deprecated copies in TrainingConfig, left None.
        cfg.train = SimpleNamespace(eval_interval=None, eval_iters=None, skip_train=None)
    return cfg


class FakeWriter:
    """TensorBoard ``SummaryWriter`` surface used by Bridge and by our sinks."""

    def __init__(self):
        self.scalars, self.hists = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))

    def add_histogram_raw(self, **kw):
        self.hists.append(kw)


class FakeWandb:
    def __init__(self):
        self.logged = []

    def log(self, d, step):
        self.logged.append((dict(d), step))


def global_state(cfg, *, step=0, consumed=0, writer=None, wandb=None):
    """``GlobalState`` look-alike: ``cfg``, ``train_state.step`` / ``consumed_train_samples``, loggers."""
    return SimpleNamespace(cfg=cfg, train_state=SimpleNamespace(step=step, consumed_train_samples=consumed,
                                                                consumed_valid_samples=0),
                           tensorboard_logger=writer, wandb_logger=wandb)
