"""The hook's own logic in one process: when it runs, records, sinks, set-up errors, shims, guard."""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hesnr_integration_helpers as H
from megatron_hesnr import AccumulatorConfig, HESNRAccumulator
from megatron_hesnr.data.dataset import PreparedDatasetError
from megatron_hesnr.evaluation.capture import LogitsCapture, _fp32_output_kwargs, resolve_capture
from megatron_hesnr.megatron_lm.compat import call_pretrain, pretrain_style
from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig, HESNRConfigError
from megatron_hesnr.evaluation.topology import Topology
from megatron_hesnr.evaluation.guard import training_state_preserved
from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook
from megatron_hesnr.evaluation.logging_sinks import _stdout_logger, format_validation_line
from megatron_hesnr.evaluation.records import read_raw_records

V, S = 24, 8


def small_dataset(manifest=None, n=4, seed=0):
    return H.uniform_dataset(V, n=n, seed=seed, max_len=20, manifest=manifest)


class Plain(torch.nn.Module):
    """Full-vocabulary LM with the GPTModel calling convention (no parallelism)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, 6, generator=g))
        self.output_layer = torch.nn.Linear(6, V, bias=False)
        torch.nn.init.normal_(self.output_layer.weight, generator=g)

    def forward(self, input_ids, position_ids, attention_mask, labels=None):
        return self.output_layer(self.emb[input_ids])  # [b, s, V]


def make_hook(tmp_path, args, metric=None, **cfg):
    sets = {"/d/a": small_dataset(), "/d/b": small_dataset(seed=1)}
    config = HESNRConfig(datasets=(EvalDataset("a", "/d/a"), EvalDataset("b", "/d/b")), impl="torch",
                         metric=metric or AccumulatorConfig(num_bins=32), jsonl=str(tmp_path / "r.jsonl"), **cfg)
    return MegatronHESNRHook(config, get_args=lambda: args, topology=Topology, forward_backward_func=H.forward_only,
                             open_dataset=sets.__getitem__, get_wandb_writer=lambda: None)


def _args(**kw):
    base = dict(seq_length=S, padded_vocab_size=V, curr_iteration=0, skip_train=False, save="/ckpt/run7",
                load=None, consumed_train_samples=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_runs_at_its_interval_once_per_iteration(tmp_path):
    args = _args()
    hook = make_hook(tmp_path, args, eval_interval=4)
    model = Plain()
    ran = []
    for it in (2, 4, 4, 6, 8):
        args.curr_iteration = it - 1  # Megatron evaluates iteration N with curr_iteration N - 1
        args.consumed_train_samples = it * 16
        ran.append(hook.non_loss_data_func([model]) is not None)
    assert ran == [False, True, False, False, True]
    recs = read_raw_records(str(tmp_path / "r.jsonl"))
    assert [(r["iteration"], r["dataset"]) for r in recs] == [(4, "a"), (4, "b"), (8, "a"), (8, "b")]
    r = recs[0]
    assert r["consumed_samples"] == 64 and r["checkpoint"] == "/ckpt/run7/iter_0000004" and r["run"] == "run7"
    assert recs[2]["checkpoint"] == "/ckpt/run7/iter_0000008"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["time"])
    assert r["config"]["k"] == 10 and r["config"]["data"]["num_trajectories"] == 4
    acc = HESNRAccumulator.from_state_dict(r["state"])
    got = acc.compute()
    for key, v in r["metrics"].items():
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(got[key])
        else:
            assert got[key] == v


def test_each_sets_accumulator_is_the_configs_metric(tmp_path, monkeypatch):
    """``config.metric`` is the one metric object: a pass accumulates under it, with the set's
    ``num_documents`` set on a copy (the config's own stays ``None``)."""
    from megatron_hesnr.evaluation import eval_pass

    built = []

    class Recording(HESNRAccumulator):
        def __init__(self, config=None, **kw):
            built.append(config)
            super().__init__(config, **kw)

    monkeypatch.setattr(eval_pass, "HESNRAccumulator", Recording)
    metric = AccumulatorConfig(k=8, threshold=1.0, num_bins=16, category_names=("action", "thought", "observation"))
    hook = make_hook(tmp_path, _args(curr_iteration=1), metric=metric)
    assert hook.config.metric is metric
    assert hook.non_loss_data_func([Plain()]) is not None
    assert built == [dataclasses.replace(metric, num_documents=4)] * 2 and metric.num_documents is None
    rec = read_raw_records(str(tmp_path / "r.jsonl"))[0]
    assert HESNRAccumulator.from_state_dict(rec["state"]).config == built[0]
    assert [rec["config"][key] for key in ("k", "threshold", "num_bins")] == [8, 1.0, 16]


def test_skip_train_always_runs_and_writes(tmp_path):
    run = tmp_path / "run3"
    (run / "iter_0003000").mkdir(parents=True)
    args = _args(skip_train=True, curr_iteration=None, iteration=3000, save=None, load=str(run), ckpt_step=3000)
    hook = make_hook(tmp_path, args, eval_interval=7)
    assert hook.non_loss_data_func([Plain()]) is not None
    recs = read_raw_records(str(tmp_path / "r.jsonl"))
    assert [(r["checkpoint"], r["run"]) for r in recs] == [(str(run / "iter_0003000"), "run3")] * 2


def test_same_numbers_as_direct_accumulation(tmp_path):
    from megatron_hesnr import token_stats
    from megatron_hesnr.evaluation.eval_pass import plan_set
    from megatron_hesnr.evaluation.windows import window_sample

    args = _args(curr_iteration=1)
    hook = make_hook(tmp_path, args, long_policy="window", window_stride=3)
    model = Plain()
    data = hook.non_loss_data_func([model])
    ds = small_dataset()
    ref = HESNRAccumulator(num_bins=32)
    with torch.no_grad():
        for i, w in plan_set("a", ds, S, "window", 3).windows:
            x, y, m = (torch.from_numpy(a)[None] for a in window_sample(*ds[i], w, S))
            ref.update(token_stats(model(x, None, None), y, vocab_size=V, impl="torch"), m)
    got, want = data["sets"]["a"]["metrics"], ref.compute()
    assert want["num_high_entropy"] > 0 and want["top1_acc"] > 0, want  # not a vacuous match
    assert got["num_tokens"] == want["num_tokens"] > 0 and got["num_high_entropy"] == want["num_high_entropy"]
    for key in ("hesnr", "top1_acc", "he_ppl"):
        assert got[key] == pytest.approx(want[key], nan_ok=True), key


def _reference_with_trajectories(model, ds, stride):
    """Direct accumulation, window by window, with each window's trajectory index."""
    from megatron_hesnr import token_stats
    from megatron_hesnr.evaluation.eval_pass import plan_set
    from megatron_hesnr.evaluation.windows import window_sample

    ref = HESNRAccumulator(num_bins=32, num_documents=len(ds))
    with torch.no_grad():
        for i, w in plan_set("x", ds, S, "window", stride).windows:
            x, y, m = (torch.from_numpy(a)[None] for a in window_sample(*ds[i], w, S))
            ref.update(token_stats(model(x, None, None), y, vocab_size=V, impl="torch"), m, torch.full_like(m, i))
    return ref


def test_records_carry_stderrs_and_two_checkpoints_compare(tmp_path):
    """Two evaluations (different weights) through the real pass: per-trajectory sums in every
    record (equal to direct accumulation), ``±`` on the validation line, and ``hesnr compare``
    on the JSONL gives diff / ci / p."""
    from megatron_hesnr.cli import main
    from megatron_hesnr.metric.stderr import RATIO_METRICS

    args = _args(curr_iteration=3)
    # micro-batches of 2 windows: padded positions and empty filler samples carry no trajectory.
    hook = make_hook(tmp_path, args, long_policy="window", window_stride=3, micro_batch_size=2, num_microbatches=3)
    a, b = Plain(), Plain()
    with torch.no_grad():
        b.output_layer.weight.mul_(1.7)
    catch = H.LineCatcher()
    _stdout_logger().addHandler(catch)  # beside its stdout handler (made first)
    try:
        hook.non_loss_data_func([a])
        args.curr_iteration = 7
        hook.non_loss_data_func([b])
    finally:
        _stdout_logger().removeHandler(catch)
    lines = [line for line in catch.lines if "validation hesnr-" in line]
    assert len(lines) == 4 and all(re.search(r"\| hesnr value: \S+ ± \S+ \|", line) for line in lines), lines
    recs = read_raw_records(str(tmp_path / "r.jsonl"))
    assert [(r["iteration"], r["dataset"]) for r in recs] == [(4, "a"), (4, "b"), (8, "a"), (8, "b")]
    ds = small_dataset()
    assert max(len(t) for t, _ in ds.items) > S + 1  # sliding windows: a trajectory in several rows of the pass
    for rec, model in ((recs[0], a), (recs[2], b)):
        ref = _reference_with_trajectories(model, ds, 3)
        got = HESNRAccumulator.from_state_dict(rec["state"])
        assert got.config.num_documents == len(ds) and rec["state"]["trajectories"]["num_documents"] == len(ds)
        torch.testing.assert_close(got.trajectories, ref.trajectories, rtol=1e-9, atol=1e-9)
        for m in RATIO_METRICS:
            want = ref.compute()[m + "_stderr"]
            assert rec["metrics"][m + "_stderr"] == pytest.approx(want, rel=1e-6, nan_ok=True), m
        assert rec["metrics"]["hesnr_stderr"] > 0
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "r.jsonl"), "--a", "iter_0000004", "--b", "iter_0000008",
                 "--dataset", "a", "--json", str(out), "--bootstrap", "200"]) == 0
    res = json.loads(out.read_text())
    assert set(res) == set(RATIO_METRICS)
    for m, e in res.items():
        assert set(e) == {"a", "b", "diff", "ci", "p"}, m
    assert res["ppl"]["a"] == pytest.approx(recs[0]["metrics"]["ppl"]) and res["ppl"]["b"] == pytest.approx(
        recs[2]["metrics"]["ppl"])
    assert res["ppl"]["diff"] != 0 and res["ppl"]["ci"][0] <= res["ppl"]["diff"] <= res["ppl"]["ci"][1]
    assert 0 < res["ppl"]["p"] <= 1


class FakeWriter:
    def __init__(self):
        self.scalars, self.hists = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram_raw(self, **kw):
        self.hists.append(kw)


def test_tensorboard_and_wandb(tmp_path):
    args = _args(curr_iteration=9, consumed_train_samples=640)
    logged = []
    hook = make_hook(tmp_path, args)
    hook._get_wandb_writer = lambda: SimpleNamespace(log=lambda d, step: logged.append((d, step)))
    data = hook.non_loss_data_func([Plain()])
    w = FakeWriter()
    hook.process_non_loss_data_func(data, 10, w)
    by_step = {(t, s): v for t, v, s in w.scalars}
    assert len(by_step) == len(w.scalars)  # no tag written twice at one step
    for name in ("a", "b"):
        metrics = data["sets"][name]["metrics"]
        assert metrics["num_high_entropy"] > 0 and metrics["top1_acc"] > 0, metrics
        for key in ("hesnr", "num_tokens", "he_ppl", "top1_acc"):
            tag = f"hesnr/{name}/all/{key}"
            assert by_step[(tag, 10)] == pytest.approx(metrics[key]), tag
            assert by_step[(f"{tag} vs samples", 640)] == pytest.approx(metrics[key]), tag
    # Every per-iteration scalar has its "vs samples" twin and nothing else is logged.
    per_iter = {t for t, s in by_step if s == 10}
    assert {(t, s) for t, s in by_step} == {(t, 10) for t in per_iter} | {(f"{t} vs samples", 640) for t in per_iter}
    assert len(w.hists) == 2 and w.hists[0]["global_step"] == 10
    h = w.hists[0]
    assert h["num"] == data["sets"]["a"]["metrics"]["num_tokens"] and len(h["bucket_counts"]) == 32
    assert logged and logged[0][1] == 10 and all(k.startswith("hesnr/") for k in logged[0][0])
    hook.process_non_loss_data_func(None, 10, w)  # a skipped evaluation logs nothing


def test_validation_line_format():
    m = {"hesnr": 0.25, "hesnr_topk": 0.5, "he_ppl": 3.0, "ppl": 9.0, "top1_acc": 0.5, "high_entropy_fraction": 0.1,
         "num_high_entropy": 3, "num_tokens": 30, "by_category": {}}
    line = format_validation_line("swe", 500, m, ("action",))
    assert line.startswith(" validation hesnr-swe at iteration 500 | hesnr value: 2.500000E-01 | ")
    assert "num_tokens: 30 |" in line and "action hesnr" not in line
    # With per-trajectory sums compute() adds stderrs: "value: X ± SE" (NaN stderr: just X).
    m.update(hesnr_stderr=0.0125, ppl_stderr=float("nan"), by_category={"action": dict(m, hesnr_stderr=0.5)})
    line = format_validation_line("swe", 500, m, ("action",))
    assert "| hesnr value: 2.500000E-01 ± 1.25E-02 | " in line and "| ppl value: 9.000000E+00 | " in line
    assert "| action hesnr value: 2.500000E-01 ± 5.00E-01 | " in line


def test_nan_metrics_left_out_of_scalars_with_a_word_why():
    """No high-entropy token: HE-SNR, HE-PPL and their stderrs are NaN, never logged as scalars;
    the standard errors of the finite metrics come right after their values."""
    from megatron_hesnr.evaluation.logging_sinks import left_out, left_out_message, scalars

    nan = float("nan")
    m = {"hesnr": nan, "hesnr_topk": nan, "he_ppl": nan, "ppl": 9.0, "top1_acc": 0.0, "high_entropy_fraction": 0.0,
         "num_high_entropy": 0, "num_tokens": 30, "num_documents": 2, "hesnr_stderr": nan, "hesnr_topk_stderr": nan,
         "he_ppl_stderr": nan, "ppl_stderr": 0.5, "top1_acc_stderr": 0.0, "high_entropy_fraction_stderr": 0.0}
    m["by_category"] = {"action": dict(m, ppl_stderr=nan, num_documents=1)}
    got = scalars("swe", m, ("action",))
    assert list(got)[:4] == ["hesnr/swe/all/ppl", "hesnr/swe/all/ppl_stderr", "hesnr/swe/all/top1_acc",
                             "hesnr/swe/all/top1_acc_stderr"]
    assert not any(k.split("/")[-1].startswith(("hesnr", "he_ppl")) for k in got)
    assert "hesnr/swe/action/ppl" in got and "hesnr/swe/action/ppl_stderr" not in got
    assert left_out("swe", m, ("action",)) == {
        "all": ["hesnr", "hesnr_stderr", "hesnr_topk", "hesnr_topk_stderr", "he_ppl", "he_ppl_stderr"],
        "action": ["hesnr", "hesnr_stderr", "hesnr_topk", "hesnr_topk_stderr", "he_ppl", "he_ppl_stderr", "ppl_stderr"]}
    msg = left_out_message("swe", 4, m, ("action",))
    assert msg.startswith("HE-SNR set swe at iteration 4: NaN, left out of TensorBoard, W&B and Bridge's "
                          "total_loss_dict: all: hesnr, hesnr_stderr, hesnr_topk, hesnr_topk_stderr, he_ppl, "
                          "he_ppl_stderr (no high-entropy token); action: hesnr, ")
    assert msg.endswith("he_ppl_stderr (no high-entropy token), ppl_stderr (undefined over 1 trajectories)")
    assert left_out_message("swe", 4, {k: v for k, v in m.items() if k != "by_category"} | {
        "hesnr": 0.1, "hesnr_topk": 0.1, "he_ppl": 2.0, "hesnr_stderr": 0.01, "hesnr_topk_stderr": 0.01,
        "he_ppl_stderr": 0.1, "num_high_entropy": 3}, ()) is None
    empty = dict(m, num_tokens=0, ppl=nan, by_category={})
    assert "(no scored token)" in left_out_message("swe", 4, empty, ())


def test_setup_errors_name_the_flag(tmp_path):
    args = _args()
    hook = MegatronHESNRHook(HESNRConfig(datasets=(EvalDataset("a", "/d/a"),)), get_args=lambda: args,
                             open_dataset=lambda p: small_dataset(manifest={}))
    with pytest.raises(HESNRConfigError, match="--hesnr-data-path: /d/a: manifest has no tokenizer.vocab_size"):
        hook.setup()
    big = small_dataset(manifest={"tokenizer": {"vocab_size": V + 1}})
    hook = MegatronHESNRHook(HESNRConfig(datasets=(EvalDataset("a", "/d/a"),)), get_args=lambda: args,
                             open_dataset=lambda p: big)
    with pytest.raises(HESNRConfigError, match="exceeds the model's padded vocabulary"):
        hook.setup()


def test_dataset_provider_wrapper_validates_flags_at_startup():
    from megatron_hesnr.megatron_lm.args import add_hesnr_args
    import argparse

    p = add_hesnr_args(argparse.ArgumentParser())
    args = p.parse_args(["--hesnr-data-path", "/x", "--hesnr-eval-interval", "3"])
    args.seq_length, args.eval_interval, args.eval_iters, args.skip_train = 16, 2, 1, False

    def provider(train_val_test_num_samples, vp_stage=None):
        return "datasets"

    provider.is_distributed = True
    wrapped = MegatronHESNRHook(get_args=lambda: args).wrap_dataset_provider(provider)
    assert wrapped.is_distributed and "vp_stage" in inspect.signature(wrapped).parameters
    with pytest.raises(HESNRConfigError, match="^--hesnr-eval-interval: 3 must be a multiple of --eval-interval 2"):
        wrapped([1, 1, 1])


def test_pretrain_shim_calls_every_signature_by_keyword():
    calls = []

    def old(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
            process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
            get_embedding_ranks=None, get_position_embedding_ranks=None, non_loss_data_func=None, store=None,
            inprocess_call_wrapper=None):
        calls.append(("old", model_provider, extra_args_provider, non_loss_data_func, args_defaults))

    def v18(cfg_container, train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
            process_non_loss_data_func=None, get_embedding_ranks=None, get_position_embedding_ranks=None,
            non_loss_data_func=None, store=None, inprocess_call_wrapper=None):
        calls.append(("v18", cfg_container, model_provider, non_loss_data_func))

    def v19(cfg_container, train_valid_test_dataset_provider, model_type, forward_step_func, model_provider=None,
            process_non_loss_data_func=None, get_embedding_ranks=None, get_position_embedding_ranks=None,
            non_loss_data_func=None, store=None, inprocess_call_wrapper=None, p2p_communicator=None,
            pg_collection=None, skip_model_parallel_init=False):
        calls.append(("v19", cfg_container, model_provider, non_loss_data_func))

    assert [pretrain_style(f) for f in (old, v18, v19)] == ["args", "container", "container_model_cfg"]
    parsed = []

    def parse_and_validate_args(extra_args_provider=None, args_defaults=None):
        parsed.append(extra_args_provider)
        return SimpleNamespace(x=1)

    def container(args, model_cfg=None):
        return ("cfg", model_cfg)

    common = dict(train_valid_test_dataset_provider="ds", model_type="mt", forward_step_func="fs",
                  extra_args_provider="xa", args_defaults={"tokenizer_type": "T"}, non_loss_data_func="nl",
                  parse_and_validate_args=parse_and_validate_args, pretrain_cfg_container_from_args=container)
    seen = []
    call_pretrain(old, model_provider="mp", **common)
    call_pretrain(v18, model_provider="mp", after_args_parsed=seen.append, **common)
    call_pretrain(v19, model_config_from_args=lambda a: "gpt-cfg", after_args_parsed=seen.append, **common)
    assert calls == [("old", "mp", "xa", "nl", {"tokenizer_type": "T"}), ("v18", ("cfg", None), "mp", "nl"),
                     ("v19", ("cfg", "gpt-cfg"), None, "nl")]
    assert parsed == ["xa", "xa"] and len(seen) == 2
    with pytest.raises(TypeError, match="p2p_communicator"):
        call_pretrain(old, model_provider="mp", p2p_communicator="x", **common)


def test_capture_resolution_and_fp32_output():
    class WithProc(torch.nn.Module):
        def forward(self, input_ids, position_ids, attention_mask, labels=None, output_processor=None):
            pass

    class F16(torch.nn.Module):  # Float16Module's forward signature
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, *inputs, fp32_output=True, **kwargs):
            return self.module(*inputs, **kwargs)

    class DDP(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, *a, **k):
            return self.module(*a, **k)

    assert resolve_capture(DDP(F16(WithProc()))) == "chunked"
    assert resolve_capture(DDP(F16(WithProc())), "output_processor") == "output_processor"
    assert resolve_capture(Plain()) == "labels_none"
    assert resolve_capture(Plain(), mtp=True) == "output_layer_hook"
    for capture in ("output_processor", "chunked"):
        with pytest.raises(ValueError, match=r"Plain\.forward has no output_processor"):
            resolve_capture(Plain(), capture)
    assert _fp32_output_kwargs(DDP(F16(Plain()))) == {"fp32_output": False}
    assert _fp32_output_kwargs(Plain()) == {}
    # The hook capture returns the output layer's last call, as a copy.
    m = Plain()
    out, layout = LogitsCapture("output_layer_hook")(m, torch.tensor([[1, 2, 3]]), None, None, None)
    assert layout == "sb" and torch.equal(out, m(torch.tensor([[1, 2, 3]]), None, None))


def test_guard_restores_modes_rngs_and_globals():
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    m.train()
    m[0].eval()  # a mixed state must come back as it was
    m.config = SimpleNamespace(timers="T")
    MoEAuxLossAutoScaler.main_loss_backward_scale = torch.tensor(0.25)
    before = (random.random, np.random.rand, torch.rand)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with training_state_preserved([m]):
        assert not m.training and not m[1].training and m.config.timers is None
        assert not torch.is_grad_enabled()
        random.random(), np.random.rand(), torch.rand(4)
        MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(9.0))
    assert m.training and not m[0].training and m[1].training and m.config.timers == "T"
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])
    assert float(MoEAuxLossAutoScaler.main_loss_backward_scale) == 0.25
    assert before == (random.random, np.random.rand, torch.rand)
    MoEAuxLossAutoScaler.main_loss_backward_scale = None


def test_end_to_end_with_a_prepared_dataset(tmp_path):
    """The hook opens a real prepared set (the data layer's writer and reader)."""
    from megatron_hesnr.data.writer import DatasetWriter

    ds = small_dataset(n=5, seed=3)
    w = DatasetWriter(str(tmp_path / "swe"), vocab_size=V)
    for ids, mask in ds.items:
        w.add(ids, mask)
    w.finalize({"tokenizer": {"vocab_size": V}})
    args = _args(iteration=2, skip_train=True, load=str(tmp_path))
    cfg = HESNRConfig(datasets=(EvalDataset("swe", str(tmp_path / "swe")),), impl="torch",
                      metric=AccumulatorConfig(num_bins=32),
                      jsonl=str(tmp_path / "out.jsonl"))
    hook = MegatronHESNRHook(cfg, get_args=lambda: args, topology=Topology, forward_backward_func=H.forward_only,
                             get_wandb_writer=lambda: None)
    got = hook.non_loss_data_func([Plain()])["sets"]["swe"]["metrics"]
    direct = make_hook(tmp_path / "direct", args)
    direct._open_dataset = lambda p: ds
    want = direct.non_loss_data_func([Plain()])["sets"]["a"]["metrics"]
    assert got["num_tokens"] == want["num_tokens"] > 0
    assert got["hesnr"] == pytest.approx(want["hesnr"], nan_ok=True)
    assert read_raw_records(str(tmp_path / "out.jsonl"))[0]["dataset"] == "swe"
    with pytest.raises(PreparedDatasetError, match=r"nope_manifest\.json: manifest not found"):
        MegatronHESNRHook(HESNRConfig(datasets=(EvalDataset("x", str(tmp_path / "nope")),)),
                          get_args=lambda: args).setup()


def test_iteration_follows_megatron_counting():
    it = MegatronHESNRHook._iteration
    # In the loop (and the final evaluation) Megatron has counted the step: curr_iteration + 1.
    assert it(SimpleNamespace(skip_train=False, curr_iteration=499, iteration=0)) == 500
    # --skip-train evaluates the loaded checkpoint (core < 0.19 never sets curr_iteration there).
    assert it(SimpleNamespace(skip_train=True, iteration=3000)) == 3000
    assert it(SimpleNamespace(skip_train=True, curr_iteration=3000, iteration=3000)) == 3000


def test_guard_restores_megatron_rng_tracker():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    saved = (dict(tracker.get_states()), getattr(tracker, "_is_initialized", None))
    state = torch.get_rng_state()
    tracker.set_states({"model-parallel-rng": state.clone()})
    try:
        with training_state_preserved([torch.nn.Linear(1, 1)]):
            # A pass that forks the tracker replaces (or mutates) its states.
            tracker.get_states()["model-parallel-rng"].zero_()
            tracker.set_states({"model-parallel-rng": torch.zeros_like(state)})
        assert torch.equal(tracker.get_states()["model-parallel-rng"], state)
    finally:
        tracker.set_states(saved[0])
        if saved[1] is not None:
            tracker._is_initialized = saved[1]


def test_records_read_by_the_report(tmp_path):
    """`hesnr report` reads the hook's records strictly, one per (set, step), no duplicates."""
    analysis = pytest.importorskip("megatron_hesnr.analysis.records")
    args = _args()
    hook = make_hook(tmp_path, args)
    for it in (100, 200, 300):
        args.curr_iteration = it - 1
        hook.non_loss_data_func([Plain()])
    res = analysis.read_records(str(tmp_path / "r.jsonl"), strict=True)
    assert not res.duplicates and not res.bad_lines
    assert sorted((r.dataset, r.iteration) for r in res.records) == [
        (d, i) for d in ("a", "b") for i in (100, 200, 300)]
