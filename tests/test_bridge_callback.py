"""The Megatron-Bridge callback driven by Bridge's own callback objects (one process, CPU).

Bridge's ``CallbackManager`` / ``CallbackContext`` / ``normalize_callbacks`` come from the
installed wheel; the shared evaluation pass is the Megatron-LM hook's, unchanged.  Here
the model is a plain full-vocabulary LM run by a forward-only loop with Megatron's
schedule contract; ``test_bridge_parallel.py`` runs megatron-core's real schedules and
vocab-parallel layer under TP / PP / DP.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import hesnr_bridge_helpers as B
import hesnr_integration_helpers as H
from megatron_hesnr import AccumulatorConfig, HESNRAccumulator, token_stats
from megatron_hesnr.bridge import BridgeCompatError, HESNRBridgeConfig
from megatron_hesnr.bridge import compat
from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig, HESNRConfigError
from megatron_hesnr.evaluation.eval_pass import plan_set
from megatron_hesnr.evaluation.topology import Topology
from megatron_hesnr.evaluation.records import read_raw_records
from megatron_hesnr.evaluation.windows import window_sample

V, S = 24, 8


@pytest.fixture(scope="module")
def bridge():
    yield from B.bridge_callbacks()


SETS = {"/d/a": H.uniform_dataset(V, n=5, seed=0, max_len=21),
        "/d/b": H.uniform_dataset(V, n=3, seed=1, max_len=21)}


class Plain(torch.nn.Module):
    """Full-vocabulary LM with GPTModel's calling convention; dropout to show modes are restored."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, 6, generator=g))
        self.out = torch.nn.Parameter(torch.randn(V, 6, generator=g))
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, input_ids, position_ids, attention_mask, labels=None):
        return self.drop(self.emb[input_ids]) @ self.out.t()  # [b, s, V]


def make_callback(tmp_path, **fields):
    from megatron_hesnr.bridge import HESNRCallback

    fields.setdefault("datasets", ["a=/d/a", "b=/d/b"])
    config = HESNRBridgeConfig(impl="torch", metric=AccumulatorConfig(num_bins=32), jsonl=str(tmp_path / "r.jsonl"),
                               **fields)
    return HESNRCallback(config, open_dataset=SETS.__getitem__, topology=Topology, forward_backward_func=H.forward_only)


def reference(model, prefix, stride=None):
    """Direct accumulation window by window, with each window's trajectory index."""
    acc = HESNRAccumulator(num_bins=32, num_documents=len(SETS[prefix]))
    model.eval()
    with torch.no_grad():
        for i, w in plan_set("x", SETS[prefix], S, "window", stride or S // 2).windows:
            x, y, m = (torch.from_numpy(a)[None] for a in window_sample(*SETS[prefix][i], w, S))
            acc.update(token_stats(model(x, None, None), y, vocab_size=V, impl="torch"), m, torch.full_like(m, i))
    model.train()
    return acc


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == pytest.approx(b, rel=1e-6)


def test_registers_for_evaluation_events_only(bridge, tmp_path):
    cb = make_callback(tmp_path)
    assert isinstance(cb, bridge.Callback)
    manager = bridge.normalize_callbacks([cb])
    assert {e for e in bridge.VALID_EVENTS if manager.has_callbacks(e)} == {"on_train_start", "on_eval_end", "on_test_end"}


@pytest.mark.parametrize("bridge_logs", [True, False])
def test_eval_end_records_logs_and_loss_dict(bridge, tmp_path, bridge_logs):
    cfg = B.container(seq_length=S, eval_interval=2)
    writer, wandb = B.FakeWriter(), B.FakeWandb()
    state = B.global_state(cfg, step=4, consumed=64, writer=writer, wandb=wandb)
    model = Plain()
    manager = bridge.normalize_callbacks([make_callback(tmp_path, bridge_logs_loss_dict=bridge_logs,
                                                        report_categories=("action", "thought"))])
    manager.fire("on_train_start", bridge.CallbackContext(state=state, model=[model], user_state=manager.user_state))
    model.train()
    rng = torch.get_rng_state()
    loss = {"lm loss": torch.tensor(2.5)}
    manager.fire("on_eval_end", bridge.CallbackContext(state=state, model=[model], user_state=manager.user_state,
                                                       total_loss_dict=loss))
    assert model.training and model.drop.training and torch.equal(rng, torch.get_rng_state())

    recs = read_raw_records(str(tmp_path / "r.jsonl"))
    assert [(r["iteration"], r["consumed_samples"], r["dataset"]) for r in recs] == [(4, 64, "a"), (4, 64, "b")]
    assert list(recs[0]) == ["iteration", "consumed_samples", "checkpoint", "run", "dataset", "time", "writer",
                             "config", "metrics", "state"]
    assert recs[0]["checkpoint"] == "/ckpt/runB/iter_0000004" and recs[0]["run"] == "runB"
    assert recs[0]["config"]["seq_length"] == S and "loss_dict_metrics" not in recs[0]["config"]
    for rec, prefix in zip(recs, ("/d/a", "/d/b")):
        ref = reference(model, prefix)
        want = ref.compute()
        assert want["num_tokens"] > 0 and want["num_high_entropy"] > 0 and want["top1_acc"] > 0
        for key in ("num_tokens", "num_high_entropy", "hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc",
                    "num_documents", "hesnr_stderr", "he_ppl_stderr", "ppl_stderr", "top1_acc_stderr"):
            assert same(rec["metrics"][key], want[key]), (prefix, key)
        assert rec["metrics"]["hesnr_stderr"] > 0
        restored = HESNRAccumulator.from_state_dict(rec["state"])
        assert restored.compute()["hesnr"] == rec["metrics"]["hesnr"]
        # The per-trajectory sums of the record: windows of one trajectory in one row.
        torch.testing.assert_close(restored.trajectories, ref.trajectories, rtol=1e-9, atol=1e-9)

    expected = {}
    for rec in recs:
        for cat in ("all", "action", "thought"):
            m = rec["metrics"] if cat == "all" else rec["metrics"]["by_category"][cat]
            for key in ("hesnr", "hesnr_stderr", "he_ppl", "he_ppl_stderr"):  # each standard error beside its value
                if math.isfinite(m[key]):
                    expected[f"hesnr/{rec['dataset']}/{cat}/{key}"] = m[key]
    assert len(expected) >= 16
    if bridge_logs:
        assert set(loss) == {"lm loss", *expected}
        assert list(loss)[1:5] == ["hesnr/a/all/hesnr", "hesnr/a/all/hesnr_stderr", "hesnr/a/all/he_ppl",
                                   "hesnr/a/all/he_ppl_stderr"]
        for key, value in expected.items():
            t = loss[key]
            assert isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype == torch.float32
            # What Bridge >= 0.6 does with each entry after on_eval_end:
            assert t.item() == pytest.approx(value, rel=1e-6) and math.isfinite(math.exp(min(20, t.item())))
    else:
        assert set(loss) == {"lm loss"}
    tags = {(t, step) for t, _, step in writer.scalars}
    assert ("hesnr/a/all/hesnr", 4) in tags and ("hesnr/b/action/num_tokens vs samples", 64) in tags
    # The standard errors beside the values, in TensorBoard and W&B alike.
    tb = {t: v for t, v, step in writer.scalars if step == 4}
    for rec in recs:
        for key in ("hesnr", "he_ppl", "ppl", "top1_acc", "high_entropy_fraction"):
            tag = f"hesnr/{rec['dataset']}/all/{key}_stderr"
            assert tb[tag] == pytest.approx(rec["metrics"][key + "_stderr"], rel=1e-12)
            assert wandb.logged[recs.index(rec)][0][tag] == tb[tag]
    assert [h["global_step"] for h in writer.hists] == [4, 4]
    assert [step for _, step in wandb.logged] == [4, 4]


def test_interval_once_per_iteration_and_test_end(bridge, tmp_path):
    cfg = B.container(seq_length=S, eval_interval=2)
    state = B.global_state(cfg)
    manager = bridge.normalize_callbacks([make_callback(tmp_path, datasets=["a=/d/a"], eval_interval=4)])
    model = Plain()
    for step, event in ((2, "on_eval_end"), (4, "on_eval_end"), (4, "on_test_end"), (6, "on_eval_end"),
                        (8, "on_test_end")):
        state.train_state.step = step
        manager.fire(event, bridge.CallbackContext(state=state, model=[model], user_state=manager.user_state,
                                                   total_loss_dict={}))
    assert [r["iteration"] for r in read_raw_records(str(tmp_path / "r.jsonl"))] == [4, 8]
    # `hesnr report` reads them strictly: one record per (set, step), no duplicates.
    from megatron_hesnr.analysis.records import read_records as report_records

    res = report_records(str(tmp_path / "r.jsonl"), strict=True)
    assert not res.duplicates and [(r.dataset, r.iteration) for r in res.records] == [("a", 4), ("a", 8)]


def test_checkpoint_sweep_under_skip_train(bridge, tmp_path):
    run = tmp_path / "run3"
    (run / "iter_0003000").mkdir(parents=True)
    cfg = B.container(seq_length=S, eval_interval=None, skip_train=True, save=None, load=str(run), ckpt_step=3000)
    writer, wandb = B.FakeWriter(), B.FakeWandb()
    state = B.global_state(cfg, step=3000, writer=writer, wandb=wandb)
    manager = bridge.normalize_callbacks([make_callback(tmp_path, eval_interval=7)])
    # No on_train_start under skip_train: the first evaluation checks and opens everything.
    manager.fire("on_eval_end", bridge.CallbackContext(state=state, model=[Plain()], user_state=manager.user_state,
                                                       total_loss_dict={}))
    recs = read_raw_records(str(tmp_path / "r.jsonl"))
    assert [(r["iteration"], r["checkpoint"], r["run"]) for r in recs] == [(3000, str(run / "iter_0003000"), "run3")] * 2
    assert writer.scalars == [] and writer.hists == []  # Bridge writes no TensorBoard under skip_train
    assert [step for _, step in wandb.logged] == [3000, 3000]


def test_startup_refuses_bad_combinations(bridge, tmp_path):
    def refuse(match, cfg, **fields):
        manager = bridge.normalize_callbacks([make_callback(tmp_path, **fields)])
        with pytest.raises(HESNRConfigError, match=match):
            manager.fire("on_train_start", bridge.CallbackContext(state=B.global_state(cfg), model=[Plain()]))

    refuse(r"^validation\.eval_iters: HE-SNR runs inside Bridge's evaluation", B.container(seq_length=S, eval_iters=0))
    refuse(r"^train\.eval_iters: ", B.container(seq_length=S, eval_iters=0, bridge03=True))
    refuse(r"^validation\.eval_interval: ", B.container(seq_length=S, eval_interval=None))
    refuse(r"^HESNRBridgeConfig\.eval_interval: 3 must be a multiple of validation\.eval_interval 2",
           B.container(seq_length=S), eval_interval=3)
    refuse(r"multiple of train\.eval_interval 2", B.container(seq_length=S, bridge03=True), eval_interval=3)
    refuse(r"^model\.seq_length: 6 must be divisible by 2 x model\.context_parallel_size = 4",
           B.container(seq_length=6, cp=2))
    refuse(r"^HESNRBridgeConfig\.window_stride: 9 exceeds model\.seq_length 8", B.container(seq_length=S),
           window_stride=9)
    from megatron_hesnr.evaluation.capture import core_has_output_processor

    if not core_has_output_processor():  # with output_processor (core >= 0.18) labels_none + MTP works
        refuse(r"^HESNRBridgeConfig\.logits_capture: labels_none with model\.mtp_num_layers",
               B.container(seq_length=S, mtp=1), logits_capture="labels_none")
    else:
        with pytest.raises(HESNRConfigError, match=r"labels_none with model\.mtp_num_layers"):
            HESNRBridgeConfig(datasets=["a=/x"], logits_capture="labels_none").check_against_container(
                B.container(seq_length=S, mtp=1), has_output_processor=False)
    manager = bridge.normalize_callbacks([make_callback(tmp_path)])
    state = B.global_state(B.container(seq_length=S))
    state.train_state.do_valid = False
    with pytest.raises(HESNRConfigError, match=r"^dataset: Bridge has no validation data"):
        manager.fire("on_train_start", bridge.CallbackContext(state=state, model=[Plain()]))
    # A 0.3-style container with skip_train and no interval is fine.
    HESNRBridgeConfig(datasets=["a=/x"]).check_against_container(
        B.container(seq_length=S, eval_interval=None, skip_train=True, bridge03=True), has_output_processor=False)


def test_config_is_the_shared_config_with_named_errors():
    metric = AccumulatorConfig(k=8, threshold=1.0)
    cfg = HESNRBridgeConfig(datasets={"swe": "/d/swe"}, metric=metric, jsonl="/r.jsonl")
    shared = HESNRConfig(datasets=(EvalDataset("swe", "/d/swe"),), metric=AccumulatorConfig(k=8, threshold=1.0),
                         jsonl="/r.jsonl")
    assert isinstance(cfg, HESNRConfig) and cfg.hesnr_config() == shared
    assert cfg.metric is metric and cfg.hesnr_config().metric is metric  # one metric object, not copies
    assert HESNRBridgeConfig(datasets=[EvalDataset("swe", "/d/swe")]).datasets == shared.datasets
    with pytest.raises(HESNRConfigError, match=r"^HESNRBridgeConfig\.metric\.threshold \(--hesnr-threshold\): must lie in"):
        HESNRBridgeConfig(datasets=["a=/x"], metric={"threshold": 5.0})
    with pytest.raises(HESNRConfigError, match=r"^HESNRBridgeConfig\.datasets \(--hesnr-data-path\): set names must be distinct"):
        HESNRBridgeConfig(datasets=["a=/x", "a=/y"])
    with pytest.raises(HESNRConfigError, match=r"^HESNRBridgeConfig\.loss_dict_metrics: unknown \['lm loss'\]"):
        HESNRBridgeConfig(datasets=["a=/x"], loss_dict_metrics=("hesnr", "lm loss"))
    with pytest.raises(HESNRConfigError, match=r"^HESNRBridgeConfig\.metric\.num_documents: is set for each set"):
        HESNRBridgeConfig(metric={"num_documents": 3})


@pytest.mark.parametrize("field, bad", [("k", 1), ("threshold", 5.0), ("num_bins", 0), ("category_names", ("all",))])
def test_a_bad_metric_field_is_refused_once_naming_the_bridge_field(field, bad):
    """A metric field set after construction (Bridge overrides, then ``finalize()``) is refused by
    AccumulatorConfig's own check, named ``HESNRBridgeConfig.metric.<field> (--hesnr-<flag>)``,
    with the flag and the field as attributes and no second error chained."""
    from megatron_hesnr.metric.accumulator import AccumulatorConfigError

    with pytest.raises(AccumulatorConfigError) as direct:
        AccumulatorConfig(**{field: bad})
    cfg = HESNRBridgeConfig(datasets=["a=/x"])
    setattr(cfg.metric, field, bad)
    with pytest.raises(HESNRConfigError) as e:
        cfg.finalize()
    flag = "--hesnr-" + field.replace("_", "-")
    assert (e.value.flag, e.value.field, e.value.message) == (flag, f"metric.{field}", direct.value.message)
    assert str(e.value) == f"HESNRBridgeConfig.metric.{field} ({flag}): {direct.value.message}"
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_bridge_adapter_takes_a_config_or_its_fields():
    from megatron_hesnr.bridge.callback import HESNRBridgeAdapter

    with pytest.raises(TypeError, match="either a HESNRBridgeConfig or its fields"):
        HESNRBridgeAdapter(HESNRBridgeConfig(), metric={"k": 3})
    assert not HESNRBridgeAdapter(HESNRBridgeConfig()).hesnr.enabled


def test_disabled_callback_does_nothing(bridge, tmp_path):
    from megatron_hesnr.bridge import HESNRCallback

    cb = HESNRCallback()
    loss = {"lm loss": torch.tensor(1.0)}
    ctx = bridge.CallbackContext(state=B.global_state(B.container(seq_length=S, eval_iters=0)), model=[Plain()],
                                 total_loss_dict=loss)
    cb.on_train_start(ctx)
    cb.on_eval_end(ctx)
    assert set(loss) == {"lm loss"}


def test_version_handling(bridge, monkeypatch):
    from megatron_hesnr.bridge import callback as cbmod

    if (compat.bridge_version() or "").startswith(("0.3.", "0.4.", "0.5.")):
        assert compat.eval_end_precedes_logging() is False
    new = "def evaluate(m):\n    m.fire(end_event, ctx)\n\ndef evaluate_and_print_results():\n    pass\n"
    old = "def evaluate(m):\n    m.fire(step_end_event, c)\n\ndef evaluate_and_print_results(m):\n    m.fire(end_event, c)\n"
    assert compat.eval_end_placement(new) == "evaluate"
    assert compat.eval_end_placement(old) == "evaluate_and_print_results"
    with pytest.raises(BridgeCompatError, match=r"megatron\.bridge\.training\.eval: neither evaluate\(\)"):
        compat.eval_end_placement("def evaluate():\n    pass\n")
    assert compat._version_tuple("0.6.0rc1+g1234") == (0, 6, 0) and compat._version_tuple("0.3") == (0, 3, 0)
    with pytest.raises(BridgeCompatError, match=r"megatron\.bridge\.training\.callbacks\.NoSuchCallback is missing"):
        compat.bridge_symbol("megatron.bridge.training.callbacks", "NoSuchCallback")
    with pytest.raises(BridgeCompatError, match=r"cannot import megatron\.bridge\.training\.gone \(for megatron"):
        compat.bridge_symbol("megatron.bridge.training.gone", "Callback")

    monkeypatch.setattr(cbmod, "_CALLBACK_CLASS", None)
    monkeypatch.setattr(bridge, "VALID_EVENTS", frozenset({"on_eval_end"}))
    with pytest.raises(BridgeCompatError, match=r"has no \['on_train_start', 'on_test_end'\] events"):
        cbmod.callback_class()
    monkeypatch.setitem(sys.modules, "megatron.bridge.training.callbacks", None)
    with pytest.raises(BridgeCompatError, match=r"megatron\.bridge\.training\.callbacks\.Callback"):
        from megatron_hesnr.bridge import HESNRCallback  # noqa: F401
    monkeypatch.setattr(cbmod, "_CALLBACK_CLASS", None)


def test_container_settings_across_versions():
    new, old = B.container(seq_length=S, eval_iters=3), B.container(seq_length=S, eval_iters=5, bridge03=True)
    assert compat.container_get(new, "validation.eval_iters") == 3
    assert compat.container_get(old, "validation.eval_iters") == 5
    assert compat.container_get(old, "validation") is None and compat.container_get(new, "model.nope") is None
    new.train.eval_iters = 7  # 0.4+: the deprecated copy is not what Bridge's loop reads
    new.validation.eval_iters = None
    assert compat.container_get(new, "validation.eval_iters") is None


def test_package_imports_without_bridge():
    code = ("import sys, megatron_hesnr.bridge as b; "
            "assert not [m for m in sys.modules if m.startswith('megatron.bridge')], 'Bridge imported'; "
            "print(b.SUPPORTED_BRIDGE_VERSIONS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ">=0.3.0" in out.stdout


def test_same_record_as_the_megatron_lm_hook(bridge, tmp_path):
    """A prepared set (the data layer's files) gives the Megatron-LM hook's record, field for field."""
    from types import SimpleNamespace

    from megatron_hesnr.data.writer import DatasetWriter
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    prefix = str(tmp_path / "swe")
    writer = DatasetWriter(prefix, vocab_size=V)
    for ids, mask in SETS["/d/a"].items:
        writer.add(ids, mask)
    writer.finalize({"tokenizer": {"vocab_size": V}})
    model = Plain()

    from megatron_hesnr.bridge import HESNRCallback

    bridge_cfg = HESNRBridgeConfig(datasets=[f"swe={prefix}"], impl="torch", metric=AccumulatorConfig(num_bins=32),
                                   window_stride=3,
                                   jsonl=str(tmp_path / "r.jsonl"))
    cb = HESNRCallback(bridge_cfg, topology=Topology, forward_backward_func=H.forward_only)
    state = B.global_state(B.container(seq_length=S, eval_interval=5, save="/ckpt/run9"), step=10, consumed=320)
    bridge.normalize_callbacks([cb]).fire("on_eval_end", bridge.CallbackContext(state=state, model=[model]))

    shared = HESNRConfig(datasets=(EvalDataset("swe", prefix),), impl="torch", metric=AccumulatorConfig(num_bins=32),
                         window_stride=3,
                         jsonl=str(tmp_path / "r.jsonl"))
    # Megatron evaluates iteration 10 with curr_iteration 9 (set before the step it counts).
    args = SimpleNamespace(seq_length=S, padded_vocab_size=None, curr_iteration=9, skip_train=False,
                           save="/ckpt/run9", load=None, consumed_train_samples=320)
    MegatronHESNRHook(shared, get_args=lambda: args, topology=Topology, forward_backward_func=H.forward_only,
                      get_wandb_writer=lambda: None).non_loss_data_func([model])

    got, want = read_raw_records(str(tmp_path / "r.jsonl"))  # Bridge's, then Megatron-LM's
    assert got["metrics"]["num_high_entropy"] > 0 and got["metrics"]["top1_acc"] > 0 and got["time"] <= want["time"]
    for rec in (got, want):
        del rec["time"], rec["config"]["eval_seconds"]
    assert json_equal(got, want)


def json_equal(a, b):
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN as text
