"""``hesnr score`` interrupted, resumed, on a full disk, and its records beside others (issue 30, section 2).

A synthetic prepared set (no tokenizer) and a model-free engine that answers each window from its tokens
alone make every run take milliseconds; every resumed run must give the uninterrupted record to 1e-9.
"""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

from megatron_hesnr.metric.accumulator import AccumulatorConfig, HESNRAccumulator
from megatron_hesnr.evaluation.config import HESNRConfig, parse_data_specs
from megatron_hesnr.scoring import driver
from megatron_hesnr.scoring.driver import score_sets
from megatron_hesnr.scoring.sets import ScoreError, open_sets
from megatron_hesnr.metric.token_stats import TokenStats

V = 1000
K = 8
SEQ = 64
#: Trajectory lengths: the first ones are cut into many windows (SEQ inputs, stride SEQ / 2).
LENGTHS = (300, 40, 220, 150, 90, 60)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> str:
    from megatron_hesnr.data.writer import DatasetWriter

    rng = np.random.default_rng(7)
    p = str(tmp_path_factory.mktemp("set") / "syn")
    w = DatasetWriter(p, vocab_size=V)
    for n in LENGTHS:
        w.add(rng.integers(0, V, n), rng.choice([0, 1, 2, 3], n, p=[0.3, 0.3, 0.2, 0.2]))
    w.finalize({"tokenizer": {"vocab_size": V}})
    return p


class Engine:
    """Model-free: each target's statistics from its window's tokens alone (deterministic, context-dependent)."""

    kind = "server"
    context_length = SEQ + 2

    def __init__(self, checkpoint: str = "fake-model", bad=None, on_window=None):
        self.checkpoint = checkpoint
        self.bad = bad              # (trajectory, window): answered with the wrong number of targets
        self.on_window = on_window  # called per window answered

    def _stats(self, prompt: np.ndarray) -> TokenStats:
        t = torch.from_numpy(np.asarray(prompt, dtype=np.int64))
        x = ((t[1:] * 2654435761 + t[:-1] * 40503 + torch.cumsum(t, 0)[1:]) % 997).double() / 997
        return TokenStats(entropy=x * math.log(K) * 0.999, logp=-(0.1 + 5 * x), logq=-0.5 * x, in_topk=x < 0.6,
                          top1=x < 0.2, valid=torch.ones_like(x, dtype=torch.bool), k=K)

    def score(self, jobs, k):
        for doc, prompts in jobs:
            out = []
            for i, p in enumerate(prompts):
                st = self._stats(p)
                if self.bad == (doc, i):
                    st = st.map(lambda v: v[:-1])
                out.append(st)
                if self.on_window is not None:
                    self.on_window()
            yield doc, out


def run(prefix: str, out: Path, engine: Engine | None = None, **kw) -> list[dict]:
    config = HESNRConfig(datasets=parse_data_specs([f"syn={prefix}"]), metric=AccumulatorConfig(k=K, threshold=1.0),
                         jsonl=str(out), report_categories=())
    sets = [s.plan(config, SEQ) for s in open_sets(config)]
    return score_sets(engine or Engine(), sets, config, seq_length=SEQ, out=str(out), run=kw.pop("run", "r"),
                      step=kw.pop("step", 0), **kw)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def assert_same(a: dict, b: dict, rel: float = 1e-9) -> None:
    """Same counts, every metric and every per-trajectory sum to ``rel``."""
    for key in ("num_tokens", "num_invalid", "num_documents", "num_high_entropy"):
        assert a["metrics"][key] == b["metrics"][key], key
    for key, x in a["metrics"].items():
        y = b["metrics"][key]
        if isinstance(x, float):
            assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rel, abs_tol=1e-12), (key, x, y)
    ta, tb = (HESNRAccumulator.from_state_dict(r["state"]).state.numpy() for r in (a, b))
    assert np.allclose(ta, tb, rtol=rel, atol=1e-12)


@pytest.fixture(scope="module")
def reference(prefix, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    (rec,) = run(prefix, out)
    assert rec["config"]["data"]["num_windows"] > 2 * len(LENGTHS)  # many trajectories have several windows
    return rec


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------ item 2: a trajectory whole or not at all
@pytest.mark.parametrize("after", [1, 2, 3, 5])
def test_ctrl_c_right_after_a_windows_sums_then_rerun_gives_the_uninterrupted_record(prefix, tmp_path, reference,
                                                                                   monkeypatch, after):
    """SIGINT arrives right after the sums were added (the ``after``-th addition: in the middle of a
    trajectory's windows when windows are added one by one); the rerun gives the uninterrupted record."""
    out = tmp_path / "out.jsonl"
    real = HESNRAccumulator.update
    calls = []

    def update(self, *a, **kw):
        real(self, *a, **kw)
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(HESNRAccumulator, "update", update)
    with pytest.raises(ScoreError, match="interrupted; .* rerun the same command to continue"):
        run(prefix, out)
    monkeypatch.undo()
    assert Path(str(out) + ".progress.json").exists() and not out.exists()
    (rec,) = run(prefix, out)
    assert_same(rec, reference)
    assert records(out) == [rec] and not leftovers(tmp_path)


def test_an_engine_fault_in_a_later_window_keeps_none_of_the_trajectory(prefix, tmp_path, reference):
    out = tmp_path / "out.jsonl"
    with pytest.raises(ScoreError, match=r"trajectory 2: the engine scored \(\d+,\) targets"):
        run(prefix, out, Engine(bad=(2, 3)))
    (rec,) = run(prefix, out)
    assert_same(rec, reference)


@pytest.mark.parametrize("window", [1, 5, 11, 20])
def test_ctrl_c_in_the_engine_between_windows(prefix, tmp_path, reference, window):
    """Ctrl-C while the engine is between two windows of a trajectory (a request in flight)."""
    out = tmp_path / "out.jsonl"
    with pytest.raises(ScoreError, match="interrupted"):
        run(prefix, out, Engine(on_window=_raise_after(window)))
    (rec,) = run(prefix, out)
    assert_same(rec, reference)


# ------------------------------------------------------------------ item 3: every setting in the resume check
def _interrupted(prefix, out: Path, **kw) -> None:
    with pytest.raises(ScoreError, match="interrupted"):
        run(prefix, out, Engine(on_window=_raise_after(20)), **kw)


def _raise_after(n: int):
    count = []

    def tick():
        count.append(1)
        if len(count) == n:
            raise KeyboardInterrupt
    return tick


def small_logits(prompt: list[int]) -> torch.Tensor:
    """A served model over the set's V ids (deterministic in the prompt)."""
    g = torch.Generator().manual_seed(sum(prompt) * 7919 + len(prompt))
    return torch.randn(len(prompt), V, generator=g, dtype=torch.float64) * 3


def _score_cli(prefix, url, out, *extra):
    from megatron_hesnr.scoring.cli import add_arguments, run as cli_run
    import argparse
    import contextlib
    import io

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([f"syn={prefix}", "--server", url, "--jsonl", str(out), "--seq-length", str(SEQ),
                         "--k", str(K), "--threshold", "1.0", "--concurrency", "1", "--backoff", "0.01",
                         *map(str, extra)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli_run(args)
    return rc, err.getvalue().strip()


@pytest.mark.parametrize("changed, named", [
    (("--step", 5), "--step 0 then, 5 now"),
    (("--run-name", "other"), "--run-name mine then, other now"),
    (("--k", 4, "--threshold", 1.0), "--k 8 then, 4 now"),
    (("--seq-length", 48), "--seq-length 64 then, 48 now"),
    (("--window-stride", 16), "--window-stride (unset) then, 16 now"),
])
def test_a_resumed_server_run_refuses_each_changed_setting_by_name(prefix, tmp_path, changed, named):
    from fake_vllm_server import FakeServer

    out = tmp_path / "out.jsonl"
    with FakeServer(small_logits, faults={3: "500"}) as srv:
        rc, err = _score_cli(prefix, srv.url, out, "--run-name", "mine", "--retries", 0)
        assert rc == 2 and "rerun the same command" in err, err
        rc, err = _score_cli(prefix, srv.url, out, "--run-name", "mine", *changed)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{out}.progress.json: left by a run with other settings" in err and named in err, err


def test_hf_and_vllm_settings_are_in_the_resume_check(prefix, tmp_path):
    """--dtype / --device (--hf), the engine options (--vllm) and the model's files: each is named."""
    import argparse

    from megatron_hesnr.scoring.cli import add_arguments, resume_settings
    from megatron_hesnr.scoring.progress import Progress

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(b"0" * 64)
    p = argparse.ArgumentParser()
    add_arguments(p)

    def settings(*flags):
        args = p.parse_args([prefix, "--jsonl", "x", *flags])
        return resume_settings(args, "run")

    out = str(tmp_path / "out.jsonl")
    base = settings("--hf", str(model))
    held = Progress(out, {"sets": {}, **base})
    held.save()
    held.close()
    for flags, named in [(("--hf", str(model), "--dtype", "bfloat16"), "--dtype float32 then, bfloat16 now"),
                         (("--hf", str(model), "--device", "cuda"), "--device cpu then, cuda now"),
                         (("--hf", str(model), "--step", "3"), "--step 0 then, 3 now")]:
        with pytest.raises(ScoreError, match=f"other settings .*{named}"):
            Progress(out, {"sets": {}, **settings(*flags)}).close()
    (model / "config.json").write_text('{"hidden_size": 16}')  # other weights under the same path
    with pytest.raises(ScoreError, match="other settings .*model files"):
        Progress(out, {"sets": {}, **settings("--hf", str(model))}).close()
    a = settings("--vllm", str(model), "--tensor-parallel-size", "2")
    b = settings("--vllm", str(model), "--engine-arg", "quantization=fp8", "--tensor-parallel-size", "2")
    assert a != b and settings("--vllm", str(model), "--dtype", "bfloat16") != settings("--vllm", str(model))


# ------------------------------------------------------------------ item 4: records that do not collide
def test_two_checkpoints_under_one_run_and_iteration_are_both_kept(prefix, tmp_path):
    """A Megatron record beside its served export (same run, set, iteration): both are read."""
    from megatron_hesnr.analysis import read_records

    out = tmp_path / "out.jsonl"
    run(prefix, out, Engine("/ckpt/mid-train/iter_0001000"), run="mid-train", step=1000)
    run(prefix, out, Engine("mid-train-export"), run="mid-train", step=1000)
    read = read_records(str(out))
    assert not read.duplicates and len(read.records) == 2
    assert {r.checkpoint for r in read.records} == {"/ckpt/mid-train/iter_0001000", "mid-train-export"}
    assert len({r.label for r in read.records}) == 2


def test_default_run_names_of_two_models_differ(prefix, tmp_path):
    """Two different models with the same directory name, scored with the default run name and --step 0,
    are two records of two runs; the same model always gets the same default name."""
    from fake_vllm_server import FakeServer

    from megatron_hesnr.analysis import read_records

    out = tmp_path / "out.jsonl"
    for name in ("/models/a/model", "/models/b/model"):
        with FakeServer(small_logits, model=name) as srv:
            rc, err = _score_cli(prefix, srv.url, out)
        assert rc == 0, err
    read = read_records(str(out))
    assert not read.duplicates and len(read.records) == 2 and len({r.run for r in read.records}) == 2
    from megatron_hesnr.scoring.cli import default_run_name

    assert default_run_name("/models/a/model") == default_run_name("/models/a/model/")
    assert default_run_name("/models/a/model").startswith("model-")


# ------------------------------------------------------------------ item 5: the duplicate check streams
def test_end_of_run_duplicate_check_streams_a_large_records_file(prefix, tmp_path):
    """A resumed run appending to a ~60 MB file of small records, in a process whose address space may
    grow by 100 MB only: loading the file into dicts (several times its size) cannot fit."""
    out = tmp_path / "big.jsonl"
    line = json.dumps({"iteration": 0, "run": "x", "dataset": "d", "checkpoint": "c",
                       "config": {"score_id": "0" * 32, "k": 8, "pad": list(range(40))},
                       "metrics": {"hesnr": 0.1, "num_tokens": 5}, "state": {"a": [1.5, 2.5, 3.5]}})
    with open(out, "w") as f:
        for i in range(60_000_000 // len(line)):
            f.write(line.replace('"iteration": 0', f'"iteration": {i}') + "\n")
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
import pytest
from test_score_resume_hostile import run, Engine, _interrupted, records
out = Path({str(out)!r})
_interrupted({prefix!r}, out)
vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize"))) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (100 << 20), resource.RLIM_INFINITY))
(rec,) = run({prefix!r}, out)
print("ok", rec["metrics"]["num_tokens"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"})
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-600:]


# ------------------------------------------------------------------ item 6: the progress file checked whole
@pytest.mark.parametrize("tamper, match", [
    (lambda s: s["done"].pop(), r"trajectory \d+ is not done but the sums count"),
    (lambda s: s["done"].append(s["done"][0]), r"lists trajectories \[\d+\] more than once"),
    (lambda s: s["done"].append("abc"), r"'done' holds 'abc', not a trajectory index"),
    (lambda s: s["done"].append(True), r"'done' holds True, not a trajectory index"),
    (lambda s: s["done"].append(-1), r"'done' holds -1, not a trajectory index"),
    (lambda s: s["done"].append(99), r"'done' holds \[99\], not trajectories this set scores"),
    (lambda s: s.update(state=_doubled(s["state"])), r"is done but the sums count \d+ of its targets, not \d+"),
    (lambda s: s.update(done="all"), r"'done' holds 'all'"),
    (lambda s: s.pop("state"), r"must be an object with 'done'"),
])
def test_an_inconsistent_progress_file_is_refused_in_one_line(prefix, tmp_path, tamper, match):
    out = tmp_path / "out.jsonl"
    _interrupted(prefix, out)
    path = Path(str(out) + ".progress.json")
    d = json.loads(path.read_text())
    assert len(d["sets"]["syn"]["done"]) >= 1
    tamper(d["sets"]["syn"])
    path.write_text(json.dumps(d))
    with pytest.raises(ScoreError) as e:
        run(prefix, out)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    import re

    assert re.search(match, msg), msg


def _doubled(state: dict) -> dict:
    acc = HESNRAccumulator.from_state_dict(state)
    return acc.merge(HESNRAccumulator.from_state_dict(state)).state_dict()


def test_a_progress_file_of_another_score_id_shape_is_refused(prefix, tmp_path):
    out = tmp_path / "out.jsonl"
    _interrupted(prefix, out)
    path = Path(str(out) + ".progress.json")
    d = json.loads(path.read_text())
    d["score_id"] = 7
    path.write_text(json.dumps(d))
    with pytest.raises(ScoreError, match="'score_id' must be 32 hex digits"):
        run(prefix, out)


# ------------------------------------------------------------------ item 9: a torn line, then a kill
def test_torn_last_line_and_a_kill_before_finish_do_not_append_twice(prefix, tmp_path, reference, monkeypatch):
    from megatron_hesnr.scoring.progress import Progress

    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(reference) + "\n" + '{"iteration": 3, "metrics": {"hes')   # a writer died mid-line

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        run(prefix, out)
    monkeypatch.undo()
    assert len(records(out)) == 2
    (rec,) = run(prefix, out)
    got = records(out)
    assert len(got) == 2 and got[1]["config"]["score_id"] == rec["config"]["score_id"]
    assert_same(got[1], reference)
    assert not Path(str(out) + ".progress.json").exists()


# ------------------------------------------------------------------ item 10: full disk
def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_score_on_a_full_disk_names_the_progress_file_and_leaves_no_temporary_file(prefix, tmp_path, reference,
                                                                                  monkeypatch):
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(ScoreError) as e:
        run(prefix, out)
    monkeypatch.undo()
    msg = str(e.value)
    assert f"{out}.progress.json: cannot save the progress (No space left on device)" in msg, msg
    assert "rerun the same command" in msg and "\n" not in msg
    assert leftovers(tmp_path) == [] and not Path(str(out) + ".progress.json").exists()
    (rec,) = run(prefix, out)
    assert_same(rec, reference)


def test_score_whose_records_do_not_fit_says_so_and_a_rerun_writes_them_once(prefix, tmp_path, reference,
                                                                             monkeypatch):
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(os, "write", _enospc)   # the records' append (the progress file is written by io)
    with pytest.raises(ScoreError) as e:
        run(prefix, out)
    monkeypatch.undo()
    msg = str(e.value)
    assert f"--jsonl {out}: cannot append the records (No space left on device)" in msg, msg
    assert f"kept in {out}.progress.json" in msg and "rerun the same command" in msg
    assert out.read_bytes() == b"" and leftovers(tmp_path) == []
    (rec,) = run(prefix, out)
    assert records(out) == [rec]
    assert_same(rec, reference)


def test_prepare_on_a_full_disk_leaves_no_temporary_file(tmp_path):
    """The builders' files fail to flush when closed (ENOSPC): abort still removes every temporary file
    and releases the prefix (a new writer may start at once)."""
    from megatron_hesnr.data.writer import DatasetWriter

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

        @property
        def closed(self):
            return self.f.closed

        def __getattr__(self, name):
            return getattr(self.f, name)

    prefix = str(tmp_path / "set")
    with pytest.raises(OSError, match="No space left"):
        with DatasetWriter(prefix, vocab_size=V) as w:
            w._tokens.data_file = Full(w._tokens.data_file)
            w._mask.data_file = Full(w._mask.data_file)
            w.add(np.arange(5), np.ones(5, dtype=np.int64))
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    w2 = DatasetWriter(prefix, vocab_size=V)
    w2.add(np.arange(5), np.ones(5, dtype=np.int64))
    w2.finalize({"tokenizer": {"vocab_size": V}})


# ------------------------------------------------------------------ item 12: report memory per record
def test_report_memory_per_small_record_is_bounded(tmp_path):
    """`hesnr report` of many small records (1.5 KB each): Python allocations at their peak stay under
    9 KB per record (the report keeps each record's state and one row of results per checkpoint; it
    held the whole summary twice more, as a strict-JSON copy and as text, at 16 KB per record).
    benchmarks/bench_report.py --small-records measures the process's peak."""
    import contextlib
    import io
    import tracemalloc

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_report import write_records

    from megatron_hesnr.cli import main

    n = 1000
    path = tmp_path / "small.jsonl"
    write_records(path, 3, 2, small=True)
    with contextlib.redirect_stdout(io.StringIO()):   # every module imported before the count starts
        assert main(["report", str(path), "--no-figures", "--output-dir", str(tmp_path / "warm")]) == 0
    write_records(path, n, 2, small=True)
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["report", str(path), "--no-figures", "--output-dir", str(tmp_path / "rep")]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / n < 9000, f"{peak / n:.0f} bytes per record ({peak / path.stat().st_size:.1f}x the file)"
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert len(summary["checkpoints"]) == n and summary["input"]["records"] == n
