"""The Bridge example's command line: --hesnr-* flags, Bridge overrides, recipe, callback wiring."""
from __future__ import annotations

import sys
import types

import pytest

import hesnr_bridge_helpers as B
from megatron_hesnr.metric.accumulator import AccumulatorConfig
from megatron_hesnr.bridge import BridgeCompatError, HESNRBridgeConfig
from megatron_hesnr.bridge import entry
from megatron_hesnr.bridge.config import bridge_config_from_args
from megatron_hesnr.evaluation.config import HESNRConfigError


def test_flags_and_overrides_are_split():
    args, overrides = entry.parse_args([
        "--recipe", "llama3_8b_pretrain_config", "--hesnr-data-path", "swe=/d/swe", "/d/other",
        "validation.eval_interval=500", "--hesnr-k", "8", "--hesnr-loss-dict-metrics", "hesnr", "top1_acc",
        "+logger.tensorboard_dir=/tb", "~peft", "checkpoint.save=/ckpt"])
    assert overrides == ["validation.eval_interval=500", "+logger.tensorboard_dir=/tb", "~peft", "checkpoint.save=/ckpt"]
    assert args.recipe == "llama3_8b_pretrain_config"
    assert bridge_config_from_args(args) == HESNRBridgeConfig(
        datasets=["swe=/d/swe", "other=/d/other"], metric=AccumulatorConfig(k=8),
        loss_dict_metrics=("hesnr", "top1_acc"))
    args, _ = entry.parse_args(["--hesnr-data-path", "a=/x", "--hesnr-loss-dict-metrics"])
    assert bridge_config_from_args(args).loss_dict_metrics == ()
    assert bridge_config_from_args(entry.parse_args([])[0]) is None
    with pytest.raises(HESNRConfigError, match=r"^--hesnr-loss-dict-metrics: unknown \['ppl_of_x'\]"):
        bridge_config_from_args(entry.parse_args(["--hesnr-data-path", "a=/x", "--hesnr-loss-dict-metrics", "ppl_of_x"])[0])
    with pytest.raises(HESNRConfigError, match=r"^--hesnr-k: must be an integer >= 2") as e:  # flags: named by the flag
        bridge_config_from_args(entry.parse_args(["--hesnr-data-path", "a=/x", "--hesnr-k", "1"])[0])
    assert (e.value.flag, e.value.field) == ("--hesnr-k", "metric.k")
    with pytest.raises(SystemExit):
        entry.parse_args(["--no-such-flag"])


def test_recipe_run_passes_the_callback(monkeypatch):
    bridge_callbacks, _, shimmed = B.import_bridge()
    try:
        recipes = types.ModuleType("hesnr_fake_recipes")
        recipes.tiny = lambda: B.container(seq_length=16, eval_interval=5)
        monkeypatch.setitem(sys.modules, "hesnr_fake_recipes", recipes)
        calls = []
        fakes = {"forward_step": object(), "pretrain": lambda **kw: calls.append(kw)}
        monkeypatch.setattr(entry, "bridge_symbol", lambda module, name: fakes[name])
        entry.run_bridge_recipe(["--recipe", "hesnr_fake_recipes:tiny", "--hesnr-data-path", "a=/x",
                                 "--hesnr-eval-interval", "10"])
        (kw,) = calls
        assert kw["forward_step_func"] is fakes["forward_step"] and kw["config"].model.seq_length == 16
        (cb,) = kw["callbacks"]
        assert isinstance(cb, bridge_callbacks.Callback) and cb.hesnr.eval_interval == 10
        with pytest.raises(HESNRConfigError, match=r"^HESNRBridgeConfig\.eval_interval: 7 must be a multiple"):
            entry.run_bridge_recipe(["--recipe", "hesnr_fake_recipes:tiny", "--hesnr-data-path", "a=/x",
                                     "--hesnr-eval-interval", "7"])
        entry.run_bridge_recipe(["--recipe", "hesnr_fake_recipes:tiny"])
        assert calls[-1]["callbacks"] is None
        with pytest.raises(BridgeCompatError, match=r"--recipe hesnr_fake_recipes:nope: no recipe hesnr_fake_recipes\.nope"):
            entry.load_recipe("hesnr_fake_recipes:nope")
    finally:
        if shimmed:
            B.drop_bridge_modules()


def test_checkpoint_writer_helper_outlives_the_exit_signal(monkeypatch):
    """megatron-core's torch_dist writer queue, made before Bridge's first save, lives through the
    SIGTERM that Slurm / torchrun send every process of the step (see bridge/preemption.py)."""
    import os
    import signal

    fa = pytest.importorskip("megatron.core.dist_checkpointing.strategies.filesystem_async")
    from megatron_hesnr.bridge import preemption

    monkeypatch.setattr(fa, "_results_queue", None)
    assert preemption.keep_checkpoint_writer_alive(signal.SIGTERM)
    manager = preemption._MANAGER
    try:
        getter = next(getattr(fa, n) for n in preemption.QUEUE_GETTERS if hasattr(fa, n))
        assert getter() is fa._results_queue                            # megatron-core takes ours
        os.kill(manager._process.pid, signal.SIGTERM)
        manager._process.join(1.0)
        assert manager._process.is_alive()
        fa._results_queue.put(("ok", 1))
        assert fa._results_queue.get(timeout=10) == ("ok", 1)
        assert not preemption.keep_checkpoint_writer_alive(signal.SIGTERM)   # made already: left alone
    finally:
        manager.shutdown()
        preemption._MANAGER = None
