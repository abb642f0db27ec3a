"""`hesnr demo`: the quick end-to-end run and the pieces it is made of."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import torch

from megatron_hesnr.metric.accumulator import HESNRAccumulator
from megatron_hesnr.data.memory import MemoryDataset
from megatron_hesnr.demo import evaluation as demo_evaluation
from megatron_hesnr.demo import sources
from megatron_hesnr.demo.eval_model import MegatronStyleGPT
from megatron_hesnr.demo.evaluation import EvalJob, TokenRecorder, run_evaluation
from megatron_hesnr.demo.gpt import GPTConfig, TinyGPT
from megatron_hesnr.demo.pipeline import DemoConfig, evaluator_config
from megatron_hesnr.demo.proxy_score import action_groups, greedy_prefix
from megatron_hesnr.demo.schedule import demo_forward_only
from megatron_hesnr.evaluation import EvalContext, EvalDataset, HESNRConfig, HESNREvaluator, Topology
from conftest import REPO
from distributed_harness import run_world
from float_tolerance import floats_close

HAVE_MCORE = importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.core") is not None


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `hesnr demo --quick` through the real CLI entry point (shared by the checks below)."""
    from megatron_hesnr.cli import main

    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--quick", "--output-dir", str(out)])
    return rc, out, buf.getvalue()


def test_quick_demo_succeeds_and_prints_table(quick_run):
    rc, out, stdout = quick_run
    assert rc == 0, stdout
    assert "HE-SNR over training" in stdout
    assert "± SE" in stdout and "held-out trajectories (trajectory-clustered" in stdout
    assert f"report:  {out / 'report'}" in stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    # One table row per checkpoint, in iteration order: the starting weights (eval at start) and 3.
    its = [c["iteration"] for c in summary["checkpoints"]]
    assert its == sorted(its) and len(its) == 4 and its[0] == 0
    for it in its:
        assert any(line.split()[:1] == [str(it)] for line in stdout.splitlines())


def test_quick_demo_records(quick_run):
    rc, out, _ = quick_run
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    # Iteration 0: the starting weights, saved before the first step and evaluated at start.
    assert [r["iteration"] for r in records] == [0, 8, 16, 24]
    assert all(r["config"]["eval_at_start"] for r in records)
    for r in records:
        assert set(r) >= {"iteration", "consumed_samples", "checkpoint", "run", "dataset", "time", "config",
                          "metrics", "state"}
        assert Path(r["checkpoint"]).name == f"iter_{r['iteration']:07d}"
        assert (Path(r["checkpoint"]) / "model.pt").is_file()
        m = r["metrics"]
        # Metrics are finite where data exists: every held-out trajectory has scored actions.
        assert m["num_tokens"] > 0 and m["num_invalid"] == 0
        for key in ("ppl", "top1_acc", "topk_acc", "mean_entropy", "high_entropy_fraction"):
            assert math.isfinite(m[key]), key
        if m["num_high_entropy"] > 0:
            assert math.isfinite(m["hesnr"]) and math.isfinite(m["he_ppl"]) and m["hesnr"] > 0
        else:
            assert math.isnan(m["hesnr"])
        # The stored state reproduces the metrics (the report recomputes from it).
        again = HESNRAccumulator.from_state_dict(r["state"]).compute()
        for key in ("hesnr", "ppl", "num_high_entropy", "num_tokens"):
            assert again[key] == m[key] if isinstance(m[key], int) else floats_close(again[key], m[key]), key
        # Only action tokens are scored (prepare's default categories).
        assert set(m["by_category"]) == {"action"}
        # Per-trajectory sums: one row per held-out trajectory, stderrs in the record.
        n_docs = r["state"]["config"]["num_documents"]
        assert n_docs >= 2 and m["num_documents"] == n_docs
        assert math.isfinite(m["ppl_stderr"]) and m["ppl_stderr"] > 0
        assert math.isfinite(m["hesnr_stderr"]) or m["num_high_entropy"] == 0
    # The same held-out tokens at every checkpoint.
    assert len({r["metrics"]["num_tokens"] for r in records}) == 1
    # Iteration 0 holds the weights the model starts with (the seed's), before any step.
    start = torch.load(Path(records[0]["checkpoint"]) / "model.pt", weights_only=True)
    assert start["consumed_samples"] == 0 and math.isnan(start["train_loss"])
    torch.manual_seed(start["train_config"]["seed"])
    init = TinyGPT(GPTConfig(**start["gpt_config"])).state_dict()
    assert init.keys() == start["model"].keys() and all(torch.equal(init[k], start["model"][k]) for k in init)


def test_quick_demo_tensor_parallel_matches_single_process(quick_run):
    _, out, _ = quick_run
    summary = json.loads((out / "demo_summary.json").read_text())
    extras = json.loads((out / "work" / "eval_extras.json").read_text())
    if not HAVE_MCORE:
        assert summary["tp"] in (1, 2)
        return
    assert summary["tp"] == 2, summary["eval_path"]
    assert "TP=2 over gloo" in summary["eval_path"]
    assert all(c["checked"] for c in extras["checkpoints"])   # --quick checks every checkpoint
    for c in extras["checkpoints"]:
        assert c["max_rel_diff_vs_single"] < 1e-6
        assert c["max_abs_diff_nll_vs_megatron_ce"] < 1e-4


def test_quick_demo_report_and_scores(quick_run):
    _, out, _ = quick_run
    report = out / "report"
    assert (report / "report.md").stat().st_size > 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary
    pngs = list(report.rglob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    with open(out / "proxy_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert [r["checkpoint"] for r in rows] == [r["checkpoint"] for r in records]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def _score_cli(*args) -> tuple[int, str, str]:
    """``hesnr score ARGS`` in this process: (exit status, stdout, stderr)."""
    return _cli_main("score", *args)


def assert_same_record(got: dict, want: dict, rel: float = 1e-4) -> None:
    """Token counts exact, every metric and standard error to ``rel`` (relative)."""
    gm, wm = got["metrics"], want["metrics"]
    for key in ("num_tokens", "num_high_entropy", "num_invalid", "num_documents"):
        assert gm[key] == wm[key], (key, gm[key], wm[key])
    for key, w in wm.items():
        if isinstance(w, float):
            g = gm[key]
            assert (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=rel, abs_tol=1e-12), (key, g, w)


def test_quick_demo_hf_export_scores_to_the_demo_record(quick_run, tmp_path):
    """`hesnr score NAME=PREFIX --hf D/hf/iter_N --step N` (NAME, PREFIX from the demo's records) gives the
    demo's record of iteration N; `hesnr compare` of the two finds no difference."""
    pytest.importorskip("transformers")
    _, out, stdout = quick_run
    demo = _records(out / "records.jsonl")[-1]
    (spec,) = demo["config"]["datasets"]
    it = demo["iteration"]
    hf = out / "hf" / f"iter_{it:07d}"
    assert f"HF:      {hf}" in stdout
    assert sorted(os.listdir(hf)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(os.listdir(out / "hf")) == [f"iter_{r['iteration']:07d}" for r in _records(out / "records.jsonl")]
    scored = tmp_path / "scored.jsonl"
    rc, printed, err = _score_cli(f"{spec['name']}={spec['prefix']}", "--hf", hf, "--step", it, "--jsonl", scored)
    assert rc == 0, err
    (rec,) = _records(scored)
    assert rec["iteration"] == it and rec["dataset"] == demo["dataset"]
    assert rec["config"]["seq_length"] == demo["config"]["seq_length"]
    assert_same_record(rec, demo)
    lines = printed.strip().splitlines()
    m = rec["metrics"]
    assert lines[-2].startswith(f"hesnr score: {spec['name']}: HE-SNR {m['hesnr']:.6g} ± ")
    assert f"{m['num_tokens']} scored tokens, {m['num_high_entropy']} high-entropy; {m['num_documents']} trajectories" \
        in lines[-2]
    assert lines[-1] == f"hesnr score: records in {scored}"
    rc, cmp_out, err = _cli_main("compare", out / "records.jsonl", scored, "--a", f"hesnr-demo/iter_{it:07d}",
                                 "--b", f"{rec['run']}/iter_{it:07d}", "--json", tmp_path / "cmp.json")
    assert rc == 0, err
    for metric, e in json.loads((tmp_path / "cmp.json").read_text()).items():
        scale = max(abs(e["a"]), 1e-12)
        assert abs(e["diff"]) <= 1e-4 * scale and max(map(abs, e["ci"])) <= 1e-4 * scale, (metric, e)


def _cli_main(*args) -> tuple[int, str, str]:
    """``hesnr ARGS`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from megatron_hesnr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def test_a_demo_training_checkpoint_points_at_its_export(quick_run, tmp_path):
    _, out, _ = quick_run
    ckpt = out / "work" / "checkpoints" / "iter_0000024"
    rc, _, err = _score_cli("heldout=" + str(out / "work" / "data" / "heldout"), "--hf", ckpt, "--jsonl",
                            tmp_path / "s.jsonl")
    assert rc == 2
    assert err.strip() == (f"hesnr score: --hf {ckpt}: no config.json in it (not a Hugging Face checkpoint folder); "
                           "a `hesnr demo` checkpoint: its Hugging Face export is <demo output-dir>/hf/iter_0000024")


@pytest.mark.parametrize("damage", ["garbage-tokenizer", "truncated-weights"])
def test_a_damaged_export_is_one_line_naming_the_file(damage, quick_run, tmp_path):
    pytest.importorskip("transformers")
    import shutil

    _, out, _ = quick_run
    demo = _records(out / "records.jsonl")[-1]
    (spec,) = demo["config"]["datasets"]
    hf = tmp_path / "model"
    shutil.copytree(out / "hf" / f"iter_{demo['iteration']:07d}", hf)
    if damage == "garbage-tokenizer":
        (hf / "tokenizer.json").write_text("{not json at all")
        want = f"hesnr score: --hf {hf}: tokenizers cannot read {hf / 'tokenizer.json'} ("
    else:
        w = hf / "model.safetensors"
        w.write_bytes(w.read_bytes()[:w.stat().st_size // 2])
        want = f"hesnr score: --hf {hf}: cannot load a causal LM from model.safetensors ("
    rc, _, err = _score_cli(f"{spec['name']}={spec['prefix']}", "--hf", hf, "--jsonl", tmp_path / "s.jsonl")
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("hesnr score:")]
    assert len(lines) == 1 and lines[0].startswith(want), err
    assert "Traceback" not in err
    assert not (tmp_path / "s.jsonl").exists()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rerun_job(out: Path, records: list[dict], tmp_path: Path, **kw) -> EvalJob:
    """The quick run's evaluation of the checkpoints of ``records`` again, its records going to ``tmp_path``."""
    cfg = DemoConfig.quick(out)
    ckpts = [{"iteration": r["iteration"], "consumed_samples": r["consumed_samples"], "name": r["checkpoint"],
              "path": str(Path(r["checkpoint"]) / "model.pt")} for r in records]
    padded = torch.load(ckpts[0]["path"], weights_only=True)["gpt_config"]["padded_vocab_size"]
    return EvalJob(checkpoints=ckpts, config=evaluator_config(cfg, out / "work" / "data" / "heldout",
                                                              tmp_path / "records.jsonl"),
                   extras_path=str(tmp_path / "extras.json"), seq_length=cfg.seq_length, padded_vocab_size=padded,
                   work_dir=str(tmp_path), **kw)


@pytest.mark.parametrize("megatron", [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_MCORE,
                                                                                       reason="needs megatron-core"))])
def test_demo_evaluation_is_the_shared_evaluator(quick_run, tmp_path, monkeypatch, megatron):
    """The demo's evaluation is HESNREvaluator.evaluate, once per checkpoint: re-evaluating the quick
    run's checkpoints in one process (megatron-core's schedule over a 1-process group, or the demo's
    stand-in schedule) calls it with each checkpoint's context and writes the records the TP=2 run wrote."""
    _, out, _ = quick_run
    demo = _records(out / "records.jsonl")
    seen = []

    def spying(method):
        def spy(self, model, ctx):
            seen.append((method.__name__, type(model).__name__, ctx.iteration, ctx.checkpoint, ctx.skip_train))
            return method(self, model, ctx)
        return spy

    for name in ("evaluate", "evaluate_at_start"):
        monkeypatch.setattr(HESNREvaluator, name, spying(getattr(HESNREvaluator, name)))
    monkeypatch.setattr(demo_evaluation, "has_megatron_core", lambda: megatron)
    job = _rerun_job(out, demo, tmp_path, tp=1, check_all=True)
    extras = run_evaluation(job)
    # The starting weights (iteration 0) through evaluate_at_start, as the hook's --hesnr-eval-at-start.
    assert seen == [("evaluate_at_start" if r["iteration"] == 0 else "evaluate", "MegatronStyleGPT", r["iteration"],
                     r["checkpoint"], True) for r in demo]
    assert extras["tp"] == 1 and ("megatron-core" in extras["path"]) == megatron
    again = _records(tmp_path / "records.jsonl")
    assert len(again) == len(demo)
    for a, b in zip(again, demo):
        assert {k: a[k] for k in ("iteration", "consumed_samples", "checkpoint", "run", "dataset")} == \
               {k: b[k] for k in ("iteration", "consumed_samples", "checkpoint", "run", "dataset")}
        # The evaluator's record config (every setting, the window plan, the buckets); only the time
        # and where this test's records go differ.
        assert set(a["config"]) == set(b["config"]) >= {"buckets", "data", "window_stride", "micro_batch_size"}
        assert {k: v for k, v in a["config"].items() if k not in ("eval_seconds", "jsonl")} == \
               {k: v for k, v in b["config"].items() if k not in ("eval_seconds", "jsonl")}
        for key in ("num_tokens", "num_high_entropy", "num_documents"):
            assert a["metrics"][key] == b["metrics"][key], key
        for key in ("hesnr", "he_ppl", "ppl", "top1_acc", "hesnr_stderr"):
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-6), key
    # The checks ran against the one-process reference; the top-1 flags are the TP=2 run's.
    tp2 = json.loads((out / "work" / "eval_extras.json").read_text())
    for c, d in zip(extras["checkpoints"], tp2["checkpoints"]):
        assert c["checked"] and c["max_rel_diff_vs_single"] < 1e-9
        ce = c["max_abs_diff_nll_vs_megatron_ce"]
        assert ce < 1e-4 if megatron else math.isnan(ce)   # Megatron's CE needs megatron-core
        flags, ref = np.concatenate(c["top1"]).astype(bool), np.concatenate(d["top1"]).astype(bool)
        assert flags.shape == ref.shape and (flags != ref).sum() <= max(1, flags.size // 1000)
    if megatron:
        # The evaluation ran in this process: it must leave megatron-core's parallel_state as it found
        # it, or the next world forked from here (the distributed tests) hangs in initialize_model_parallel.
        assert run_world(_initialize_tp2, 2, tmp_path / "world", timeout=60) == [2, 2]


def _initialize_tp2(rank: int, world: int) -> int:
    from megatron.core import parallel_state as ps

    from megatron_hesnr.megatron_lm.compat import destroy_model_parallel

    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    try:
        return ps.get_tensor_model_parallel_world_size()
    finally:
        destroy_model_parallel()


def test_demo_evaluation_falls_back_to_one_process_and_says_so(quick_run, tmp_path, monkeypatch, caplog):
    """No gloo processes (spawn fails) and no 1-process group either: the evaluation still runs, in
    one process through the demo's stand-in schedule, and each fallback is logged as a warning."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    _, out, _ = quick_run
    demo = _records(out / "records.jsonl")[-1:]

    def refuse(*_a, **_k):
        raise RuntimeError("sandbox: no sockets")

    monkeypatch.setattr(mp, "spawn", refuse)
    monkeypatch.setattr(dist, "init_process_group", refuse)
    job = _rerun_job(out, demo, tmp_path, tp=2)
    with caplog.at_level("WARNING", logger="megatron_hesnr.demo.evaluation"):
        extras = run_evaluation(job)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("TP=2 evaluation over gloo failed (sandbox: no sockets)" in w for w in warned), warned
    if HAVE_MCORE:
        assert any("no 1-process gloo group" in w for w in warned), warned
    assert extras["tp"] == 1 and "the demo's forward-only schedule" in extras["path"]
    (again,) = _records(tmp_path / "records.jsonl")
    assert again["metrics"]["num_tokens"] == demo[0]["metrics"]["num_tokens"]
    assert again["metrics"]["hesnr"] == pytest.approx(demo[0]["metrics"]["hesnr"], rel=1e-6)


def test_demo_start_evaluation_is_written_once_per_records_file(quick_run, tmp_path, monkeypatch):
    """The demo's starting weights go through evaluate_at_start: evaluating them again into records that
    already hold (run, set, iteration 0) writes nothing and leaves them out of the extras."""
    _, out, _ = quick_run
    start = _records(out / "records.jsonl")[:1]
    assert start[0]["iteration"] == 0
    monkeypatch.setattr(demo_evaluation, "has_megatron_core", lambda: False)   # one process, no group
    job = _rerun_job(out, start, tmp_path, tp=1)
    assert job.config.eval_at_start
    extras = []
    for _ in range(2):   # a rerun into the same records (run_evaluation would start them afresh)
        demo_evaluation._single_process(job)
        extras.append(json.loads(Path(job.extras_path).read_text())["checkpoints"])
    (again,) = _records(tmp_path / "records.jsonl")
    assert [[c["iteration"] for c in e] for e in extras] == [[0], []]
    assert {k: again[k] for k in ("iteration", "consumed_samples", "checkpoint", "run", "dataset")} == \
           {k: start[0][k] for k in ("iteration", "consumed_samples", "checkpoint", "run", "dataset")}
    assert again["metrics"]["hesnr"] == pytest.approx(start[0]["metrics"]["hesnr"], rel=1e-6)


def test_open_leading_keeps_the_first_trajectories(quick_run):
    """The CPU budget evaluates the first N held-out trajectories: the same items and manifest (the
    evaluator reads the vocabulary from it), checked against the files first."""
    _, out, _ = quick_run
    from megatron_hesnr.data import PreparedDataset
    from megatron_hesnr.data.dataset import PreparedDatasetError
    from megatron_hesnr.demo.evaluation import open_leading

    prefix = str(out / "work" / "data" / "heldout")
    full = PreparedDataset(prefix)
    assert open_leading(prefix, None).__class__ is PreparedDataset and len(open_leading(prefix, 99)) == len(full)
    part = open_leading(prefix, 3)
    assert len(part) == 3 and part.manifest == full.manifest
    for i in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(part[i], full[i]))
    with pytest.raises(PreparedDatasetError, match="manifest not found"):
        open_leading(str(out / "work" / "data" / "nothing"), 3)


@pytest.mark.parametrize("capture", ["labels_none", "auto"])  # auto: the chunked capture (output_processor)
def test_token_observer_sees_every_scored_target_once(capture):
    """The evaluator's token observer (what the proxy score reads) gets each scored target once, at its
    trajectory and position, with its NLL, through bucketed windows and the demo's stand-in schedule."""
    vocab, seq = 50, 16
    torch.manual_seed(0)
    gpt = TinyGPT(GPTConfig(vocab_size=vocab, padded_vocab_size=64, seq_length=seq, hidden_size=16, num_layers=1,
                            num_heads=2)).eval()
    rng = np.random.default_rng(3)
    items = [(rng.integers(0, vocab, n).astype(np.int64), rng.integers(0, 3, n).astype(np.uint8))
             for n in (5, 17, 40, 9, 2, 33)]
    recorder = TokenRecorder()
    cfg = HESNRConfig(datasets=(EvalDataset("mem", "mem"),), micro_batch_size=3, window_stride=5, length_multiple=4,
                      logits_capture=capture, logits_chunk=4 if capture == "auto" else "auto")
    ev = HESNREvaluator(cfg, topology=Topology, forward_backward_func=demo_forward_only,
                        open_dataset=lambda _: MemoryDataset(items, vocab), token_observer=recorder)
    model = MegatronStyleGPT.for_rank(gpt, tp_rank=0, tp_size=1, megatron=False)
    data = ev.evaluate(model, EvalContext(iteration=1, consumed_samples=None, seq_length=seq, padded_vocab_size=64,
                                          run_dir=None, checkpoint=None))
    assert ev.capture_line.startswith(f"logits capture {'chunked' if capture == 'auto' else capture} ")
    top1, nll = recorder.take([len(t) for t, _ in items])
    scored = 0
    for (tokens, mask), flags, loss in zip(items, top1, nll):
        want = np.flatnonzero(mask != 0)
        want = want[want >= 1]
        assert np.flatnonzero(np.isfinite(loss)).tolist() == want.tolist()
        scored += len(want)
        if len(tokens) <= seq + 1:  # one window: compare with the whole trajectory's logits
            with torch.no_grad():
                logp = torch.log_softmax(gpt(torch.from_numpy(tokens[None, :-1]))[0, :, :vocab].double(), -1)
            ref = -logp[torch.arange(len(tokens) - 1), torch.from_numpy(tokens[1:])].numpy()
            np.testing.assert_allclose(loss[want], ref[want - 1], rtol=1e-5)
            top = logp.argmax(-1).numpy() == tokens[1:]
            assert (flags[want] == top[want - 1]).all()
    assert scored == data["sets"]["mem"]["metrics"]["num_tokens"]
    assert recorder.take([len(t) for t, _ in items])[1][2].size == 40   # take() resets: nothing left
    assert np.isnan(recorder.take([len(t) for t, _ in items])[1][2]).all()


def test_demo_model_and_schedule_refuse_what_they_do_not_do():
    gpt = TinyGPT(GPTConfig(vocab_size=50, padded_vocab_size=64, seq_length=8, hidden_size=8, num_layers=1,
                            num_heads=2))
    model = MegatronStyleGPT.for_rank(gpt, tp_rank=1, tp_size=2, megatron=False)
    x = torch.zeros(2, 8, dtype=torch.long)
    assert model(x, torch.arange(8).expand(2, 8), None).shape == (2, 8, 32)  # this rank's half of the vocabulary
    with pytest.raises(NotImplementedError, match="labels=None"):
        model(x, torch.arange(8).expand(2, 8), None, labels=x)
    with pytest.raises(ValueError, match="forward passes only"):
        demo_forward_only(forward_step_func=None, data_iterator=[], model=[model], num_microbatches=1,
                          forward_only=False)
    with pytest.raises(ValueError, match="one model chunk"):
        demo_forward_only(forward_step_func=None, data_iterator=[], model=[model, model], num_microbatches=1)


def test_bundled_trajectories_have_scored_actions(quick_run):
    """Every bundled trajectory is read by `hesnr prepare` and every action yields scored tokens."""
    _, out, _ = quick_run
    n_lines = len(sources.bundled_trajectories().read_text().splitlines())
    docs = []
    for name in ("train", "heldout"):
        manifest = json.loads((out / "work" / "data" / f"{name}_manifest.json").read_text())
        assert all(i["status"] != "error" and not i["line_errors"] for i in manifest["inputs"])
        docs += manifest["documents"]
    assert len(docs) == n_lines
    for d in docs:
        assert d["num_actions"] >= 5 and d["actions_scored"] == d["num_actions"], d


# ----------------------------------------------------------------------------- pieces
def test_action_groups_and_greedy_prefix():
    #          0  1  2  3  4  5  6  7  8  9 10 11
    mask = np.array([0, 3, 1, 1, 0, 1, 2, 1, 1, 3, 0, 1])
    groups = [g.tolist() for g in action_groups(mask)]
    assert groups == [[2, 3, 5], [7, 8], [11]]
    top1 = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    # Action 1: first miss at its 2nd token (1/3); action 2: exact (1); action 3: exact (1).
    got = greedy_prefix([mask], [top1])
    assert got["actions"] == 3
    assert got["score"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert got["exact_match"] == pytest.approx(2 / 3)
    assert greedy_prefix([np.zeros(5, int)], [np.ones(5, bool)])["actions"] == 0
    # Without breakdown categories a long unscored gap separates actions.
    only = np.zeros(100, dtype=int)
    only[[1, 2, 3, 80, 81]] = 1
    assert [g.tolist() for g in action_groups(only)] == [[1, 2, 3], [80, 81]]


def test_split_trajectories(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text("".join(json.dumps({"messages": [{"i": i}]}) + "\n" for i in range(7)))
    traj = tmp_path / "b.traj"
    traj.write_text("{}")
    s = sources.split_trajectories([jl, traj], tmp_path / "out", eval_every=3)
    assert (s.num_train, s.num_eval, s.held_out) == (6, 2, True)
    ev = [json.loads(x)["messages"][0]["i"] for x in (tmp_path / "out" / "eval" / "trajectories.jsonl").read_text().splitlines()]
    assert ev == [2, 5]
    assert any(p.name.endswith("b.traj") for p in s.train)   # item 7 (index 7) -> train
    again = sources.split_trajectories([jl, traj], tmp_path / "out2", eval_every=3)
    assert [p.read_bytes() for p in again.eval] == [p.read_bytes() for p in s.eval]
    with pytest.raises(FileNotFoundError, match="--trajectories"):
        sources.split_trajectories([tmp_path / "missing.jsonl"], tmp_path / "out3")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"messages": []}) + "\n")
    s1 = sources.split_trajectories([one], tmp_path / "out4")
    assert not s1.held_out and s1.num_train == s1.num_eval == 1


def test_stdlib_code_is_bounded_and_deterministic():
    a = sources.stdlib_code(200_000)
    b = sources.stdlib_code(200_000)
    assert a == b
    total = sum(len(t.encode()) for t in a)
    assert 200_000 <= total < 200_000 + 64_000
    assert all("def " in t or "class " in t or "import " in t for t in a)


def test_bpe_offsets_cover_the_text(tmp_path):
    pytest.importorskip("tokenizers")
    from megatron_hesnr.data.pipeline import load_tokenizer
    from megatron_hesnr.demo.bpe import eod_token_id, train_bpe

    texts = sources.stdlib_code(60_000)
    path = train_bpe(texts, 400, tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)
    assert tok.get_vocab_size() <= 400 and eod_token_id(tok) == 0
    text = "def f(x):\n    return x  # café ünïcode\n"
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    # No character falls between tokens: offsets tile the text.
    ends = [e for _, e in enc.offsets]
    starts = [s for s, _ in enc.offsets]
    assert starts[0] == 0 and ends[-1] == len(text)
    assert all(s <= prev_e for s, prev_e in zip(starts[1:], ends[:-1]))
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        load_tokenizer(tmp_path / "nope.json")


def test_generator_reproduces_a_bundled_trajectory(tmp_path):
    """The committed JSONL is what examples/demo_trajectories/generate.py writes."""
    if shutil.which("git") is None:
        pytest.skip("the generator needs git")
    sys.path.insert(0, str(REPO / "examples" / "demo_trajectories"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    first = json.loads(sources.bundled_trajectories().read_text().splitlines()[0])
    again = generate.session(generate.BUGS[0], 0, tmp_path)
    assert again == first
