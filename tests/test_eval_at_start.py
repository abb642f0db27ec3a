"""``--hesnr-eval-at-start`` / ``HESNRBridgeConfig.eval_at_start`` in one process, both front ends.

The Megatron-LM hook arms a one-shot wrapper of ``megatron.training.training.train`` from its
wrapped dataset provider (here a stand-in module under that name, with Megatron's signature);
Bridge's callback evaluates in ``on_train_start`` (Bridge's own callback objects). Each start
record equals an evaluation of the same weights under skip-train, and a second start from the
same iteration (a requeued job) writes nothing for a set the records file already holds.
The real ``pretrain()`` loops: tests/test_megatron_e2e.py, tests/test_nemo_run_slurm.py.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import hesnr_integration_helpers as H
from megatron_hesnr import AccumulatorConfig, HESNRAccumulator
from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
from megatron_hesnr.evaluation.records import read_raw_records, recorded_keys
from megatron_hesnr.evaluation.topology import Topology
from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

V, S = 24, 8
SETS = {"/d/a": H.uniform_dataset(V, n=4, seed=0, max_len=20), "/d/b": H.uniform_dataset(V, n=3, seed=1, max_len=20)}


class Plain(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(V, 6, generator=g))
        self.out = torch.nn.Parameter(torch.randn(V, 6, generator=g))
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, input_ids, position_ids, attention_mask, labels=None):
        return self.drop(self.emb[input_ids]) @ self.out.t()


def same_record(a: dict, b: dict) -> None:
    """Same metrics and per-trajectory sums (1e-5 relative)."""
    for key, value in a["metrics"].items():
        if isinstance(value, float):
            ref = b["metrics"][key]
            assert (math.isnan(value) and math.isnan(ref)) or value == pytest.approx(ref, rel=1e-5), key
    ta, tb = (HESNRAccumulator.from_state_dict(r["state"]) for r in (a, b))
    torch.testing.assert_close(ta.trajectories, tb.trajectories, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ta.state, tb.state, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------- Megatron-LM
def megatron_args(**kw):
    base = dict(seq_length=S, padded_vocab_size=V, curr_iteration=0, iteration=0, skip_train=False,
                save="/ckpt/run7", load="/ckpt/run7", pretrained_checkpoint="/ckpt/base", consumed_train_samples=0)
    base.update(kw)
    return SimpleNamespace(**base)


def megatron_hook(jsonl, args, **cfg):
    config = HESNRConfig(datasets=(EvalDataset("a", "/d/a"), EvalDataset("b", "/d/b")), impl="torch",
                         metric=AccumulatorConfig(num_bins=32), jsonl=str(jsonl), **cfg)
    return MegatronHESNRHook(config, get_args=lambda: args, topology=Topology, forward_backward_func=H.forward_only,
                             open_dataset=SETS.__getitem__, get_wandb_writer=lambda: None)


@pytest.fixture
def training_module(monkeypatch):
    """``megatron.training.training`` with Megatron's ``train`` signature; records each call."""
    mod = types.ModuleType("megatron.training.training")
    calls = []

    def train(forward_step_func, model, optimizer, opt_param_scheduler, train_data_iterator, valid_data_iterator,
              process_non_loss_data_func, config, checkpointing_context, non_loss_data_func, inference_model=None):
        calls.append(([m.training for m in model], torch.get_rng_state()))
        return 7, 0.0

    mod.train, mod.calls, mod.original = train, calls, train
    monkeypatch.setitem(sys.modules, "megatron.training.training", mod)
    return mod


def start_job(hook, mod, model):
    """What pretrain() does: the dataset provider (wrapped), then train(...) positionally."""
    hook.wrap_dataset_provider(lambda *a, **k: ("train", "valid", "test"))([1, 1, 1])
    rng = torch.get_rng_state()
    out = mod.train(None, [model], None, None, None, None, None, None, None, None)
    assert out == (7, 0.0) and mod.train is mod.original          # one shot, then Megatron's own
    modes, rng_at_train = mod.calls[-1]
    assert modes == [True] and torch.equal(rng_at_train, rng)     # training sees no trace of the pass


def test_megatron_start_record_equals_a_skip_train_evaluation_and_is_not_repeated(tmp_path, training_module,
                                                                                   caplog):
    jsonl, model = tmp_path / "r.jsonl", Plain().train()
    start_job(megatron_hook(jsonl, megatron_args(consumed_train_samples=0), eval_at_start=True, eval_interval=4),
              training_module, model)
    recs = read_raw_records(str(jsonl))
    assert [(r["iteration"], r["dataset"], r["run"], r["checkpoint"]) for r in recs] == \
        [(0, "a", "run7", "/ckpt/base"), (0, "b", "run7", "/ckpt/base")]
    assert recs[0]["config"]["eval_at_start"] is True
    # the same weights evaluated under --skip-train (a checkpoint sweep)
    ref_jsonl = tmp_path / "ref.jsonl"
    ref = megatron_hook(ref_jsonl, megatron_args(skip_train=True, curr_iteration=None, load="/ckpt/base"))
    assert ref.non_loss_data_func([model]) is not None
    for got, want in zip(recs, read_raw_records(str(ref_jsonl))):
        same_record(got, want)

    # A requeued job starting from the same weights: nothing evaluated, a word why.
    caplog.set_level(logging.INFO, logger="megatron_hesnr")
    start_job(megatron_hook(jsonl, megatron_args(), eval_at_start=True), training_module, Plain().train())
    assert len(read_raw_records(str(jsonl))) == 2
    assert "HE-SNR at start: a, b already recorded at iteration 0 of run run7" in caplog.text

    # Resumed from iteration 4 (a torn last line is no record): evaluated at 4, the checkpoint loaded.
    with open(jsonl, "a") as f:
        f.write('{"iteration": 4, "run": "run7", "dataset": "a", "metr')
    args = megatron_args(iteration=4, curr_iteration=0, consumed_train_samples=64)
    hook = megatron_hook(jsonl, args, eval_at_start=True)
    start_job(hook, training_module, model)
    lines = jsonl.read_text().splitlines()
    assert lines[2].endswith('"metr')                            # the torn line stays one bad line
    recs = [json.loads(x) for x in lines[3:]]
    assert [(r["iteration"], r["dataset"], r["checkpoint"], r["consumed_samples"]) for r in recs] == \
        [(4, "a", "/ckpt/run7/iter_0000004", 64), (4, "b", "/ckpt/run7/iter_0000004", 64)]
    # Megatron's loop evaluating the same iteration in this job adds nothing.
    args.curr_iteration = 3
    assert hook.non_loss_data_func([model]) is None
    assert ("run7", "a", 4) in recorded_keys(str(jsonl)) and len(recorded_keys(str(jsonl))) == 4


def test_megatron_start_evaluates_only_the_sets_not_yet_recorded(tmp_path, training_module):
    jsonl, model = tmp_path / "r.jsonl", Plain().train()
    one = HESNRConfig(datasets=(EvalDataset("a", "/d/a"),), impl="torch", metric=AccumulatorConfig(num_bins=32),
                      jsonl=str(jsonl), eval_at_start=True)
    start_job(MegatronHESNRHook(one, get_args=lambda: megatron_args(), topology=Topology,
                                forward_backward_func=H.forward_only, open_dataset=SETS.__getitem__,
                                get_wandb_writer=lambda: None), training_module, model)
    start_job(megatron_hook(jsonl, megatron_args(), eval_at_start=True), training_module, model)  # set b added
    assert [(r["iteration"], r["dataset"]) for r in read_raw_records(str(jsonl))] == [(0, "a"), (0, "b")]


def test_megatron_off_by_default_and_under_skip_train(tmp_path, training_module):
    start_job(megatron_hook(tmp_path / "r.jsonl", megatron_args()), training_module, Plain().train())
    assert not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------------ Bridge
@pytest.fixture(scope="module")
def bridge():
    import hesnr_bridge_helpers as B

    yield from B.bridge_callbacks()


def bridge_start(bridge, jsonl, step, model, *, skip_train=False, pretrained=None, **fields):
    import hesnr_bridge_helpers as B
    from megatron_hesnr.bridge import HESNRBridgeConfig, HESNRCallback

    cfg = B.container(seq_length=S, eval_interval=2, save="/ckpt/runB", load="/ckpt/runB" if step or skip_train
                      else None, skip_train=skip_train, ckpt_step=step if skip_train else None)
    cfg.checkpoint.pretrained_checkpoint = pretrained
    writer = B.FakeWriter()
    state = B.global_state(cfg, step=step, consumed=16 * step, writer=writer)
    config = HESNRBridgeConfig(datasets=["a=/d/a", "b=/d/b"], impl="torch", metric=AccumulatorConfig(num_bins=32),
                               jsonl=str(jsonl), **fields)
    manager = bridge.normalize_callbacks([HESNRCallback(config, open_dataset=SETS.__getitem__, topology=Topology,
                                                        forward_backward_func=H.forward_only)])
    event = "on_eval_end" if skip_train else "on_train_start"
    manager.fire(event, bridge.CallbackContext(state=state, model=[model], user_state=manager.user_state,
                                               total_loss_dict={}))
    return manager, state, writer


def test_bridge_start_record_equals_a_skip_train_evaluation_and_is_not_repeated(bridge, tmp_path):
    jsonl, model = tmp_path / "r.jsonl", Plain().train()
    rng = torch.get_rng_state()
    _, _, writer = bridge_start(bridge, jsonl, 0, model, pretrained="/ckpt/base", eval_at_start=True)
    assert model.training and model.drop.training and torch.equal(rng, torch.get_rng_state())
    recs = read_raw_records(str(jsonl))
    assert [(r["iteration"], r["dataset"], r["run"], r["checkpoint"]) for r in recs] == \
        [(0, "a", "runB", "/ckpt/base"), (0, "b", "runB", "/ckpt/base")]
    assert {(t, step) for t, _, step in writer.scalars if t == "hesnr/a/all/ppl"} == {("hesnr/a/all/ppl", 0)}
    ref_jsonl = tmp_path / "ref.jsonl"
    bridge_start(bridge, ref_jsonl, 0, model, skip_train=True)
    for got, want in zip(recs, read_raw_records(str(ref_jsonl))):
        same_record(got, want)

    bridge_start(bridge, jsonl, 0, Plain().train(), eval_at_start=True)          # requeued: nothing again
    assert len(read_raw_records(str(jsonl))) == 2

    manager, state, _ = bridge_start(bridge, jsonl, 4, model, eval_at_start=True)  # resumed from step 4
    recs = read_raw_records(str(jsonl))[2:]
    assert [(r["iteration"], r["checkpoint"], r["consumed_samples"]) for r in recs] == \
        [(4, "/ckpt/runB/iter_0000004", 64)] * 2
    manager.fire("on_eval_end", bridge.CallbackContext(state=state, model=[model], user_state=manager.user_state,
                                                       total_loss_dict={}))       # Bridge's own at 4: not again
    assert len(read_raw_records(str(jsonl))) == 4


def test_bridge_off_by_default(bridge, tmp_path):
    bridge_start(bridge, tmp_path / "r.jsonl", 0, Plain().train())
    assert not (tmp_path / "r.jsonl").exists()
