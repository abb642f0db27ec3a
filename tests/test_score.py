"""``hesnr score`` without vLLM: top-k log-probabilities -> TokenStats, the records, the --hf reference path,
the --server client against a stand-in server on 127.0.0.1 (its faults, resuming), and bad input.

The real engine (vLLM offline and its server) is tested in test_score_vllm.py (the vllm CI leg)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IN_CI, REPO
from fake_vllm_server import FakeServer, prompt_logprobs
from score_helpers import hesnr, prepare_set, write_tiny_qwen2

from megatron_hesnr.scoring.engine_logprobs import (MalformedLogprobs, json_positions,
                                                    stats_from_prompt_logprobs)
from megatron_hesnr.metric.token_stats import token_stats
from megatron_hesnr.metric.topk_stats import token_stats_from_topk

RATIOS = ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "topk_acc", "mean_entropy", "high_entropy_fraction")


# ------------------------------------------------------------------ metric core
def _engine_view(logits: torch.Tensor, labels: torch.Tensor, k: int):
    """What an engine returns: the top-k log-probabilities, the target's and its rank (vLLM's rule: the
    number of tokens at least as likely as the target)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    top = lp.topk(k, dim=-1).values
    t = lp.gather(1, labels[:, None])[:, 0]
    rank = (lp >= t[:, None]).sum(dim=1)
    return top, t, rank


def test_topk_stats_equal_token_stats_including_exact_ties():
    """From (top-k log-probs, target log-prob, rank) the same TokenStats as from the logits; a target tied
    exactly with the k-th (or first) value counts inside the top k (top-1), as token_stats counts it."""
    g = torch.Generator().manual_seed(0)
    n, v, k = 400, 1000, 10
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * torch.linspace(0.2, 6, n, dtype=torch.float64)[:, None]
    labels = torch.randint(0, v, (n,), generator=g)
    # exact ties: rows 0-19 the target ties the k-th largest, rows 20-29 the largest, rows 30-39 the k-th
    # largest ties a non-target token just outside
    for i in range(40):
        order = logits[i].argsort(descending=True)
        if i < 20:
            logits[i, labels[i]] = logits[i, order[k - 1]] if labels[i] != order[k - 1] else logits[i, labels[i]]
        elif i < 30:
            logits[i, labels[i]] = logits[i, order[0]]
        else:
            logits[i, order[k]] = logits[i, order[k - 1]]
    logits[45, 3] = float("nan")  # an invalid row
    ref = token_stats(logits, labels, k=k)
    top, t, rank = _engine_view(logits, labels, k)
    got = token_stats_from_topk(top, t, rank)
    assert got.k == k
    assert torch.equal(got.valid, ref.valid) and not bool(got.valid[45])
    for name in ("entropy", "logp", "logq"):
        a, b = getattr(got, name), getattr(ref, name)
        assert torch.allclose(a[ref.valid], b[ref.valid], rtol=0, atol=1e-10), name
    assert torch.equal(got.in_topk, ref.in_topk) and torch.equal(got.top1, ref.top1)
    assert int(ref.in_topk[:20].sum()) == 20 and int(ref.top1[20:30].sum()) == 10


def test_prompt_logprobs_in_vllm_shape_give_the_same_stats():
    """The server's JSON (string ids, ranks, the target added when outside the top k) -> the same stats."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 500, (60,), generator=g).tolist()
    logits = torch.randn(60, 500, generator=g) * 3
    k = 5
    positions = json_positions(json.loads(json.dumps(prompt_logprobs(prompt, logits, k))))
    got = stats_from_prompt_logprobs(np.array(prompt), positions, k)
    ref = token_stats(logits[:-1], torch.tensor(prompt[1:]), k=k)
    for name in ("entropy", "logp", "logq"):
        assert torch.allclose(getattr(got, name), getattr(ref, name).double(), atol=1e-5), name
    assert torch.equal(got.in_topk, ref.in_topk) and torch.equal(got.top1, ref.top1)


@pytest.mark.parametrize("breakage, match", [
    (lambda p: p[:-1], "positions for a"),
    (lambda p: p[:3] + [None] + p[4:], "position 3 is empty"),
    (lambda p: p[:2] + [[e for e in p[2] if e[0] != 9]] + p[3:], "lacks the prompt's token 9"),
    (lambda p: p[:2] + [[e for e in p[2] if e[0] == 9] + [e for e in p[2] if e[0] != 9][:1]] + p[3:],
     "holds 2 entries"),
    (lambda p: p[:2] + [[(t, lp, None) for t, lp, _ in p[2]]] + p[3:], "gives no rank"),
])
def test_malformed_prompt_logprobs_are_named(breakage, match):
    prompt = [1, 2, 9, 4, 5, 6]
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(2))
    good = json_positions(prompt_logprobs(prompt, logits, 4))
    stats_from_prompt_logprobs(np.array(prompt), good, 4)
    with pytest.raises(MalformedLogprobs, match=match):
        stats_from_prompt_logprobs(np.array(prompt), breakage(good), 4)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def score_set(tmp_path_factory, trajectories_dir, deepseek_tokenizer_json) -> Path:
    """The shared mini-swe-agent and openhands trajectories prepared with the DeepSeek tokenizer (4 trajectories)."""
    return prepare_set(trajectories_dir, tmp_path_factory.mktemp("set") / "traj")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, score_set):
    if not IN_CI:
        pytest.importorskip("transformers")
    from megatron_hesnr.data.dataset import PreparedDataset

    ds = PreparedDataset(str(score_set))
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "model", sequences=[ds[i][0] for i in range(len(ds))])


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _table(rec: dict) -> np.ndarray:
    from megatron_hesnr.metric.accumulator import HESNRAccumulator

    return HESNRAccumulator.from_state_dict(rec["state"]).trajectories.numpy()


def assert_records_agree(a: dict, b: dict, rel: float = 1e-4) -> None:
    """Same set, same counts per trajectory, every metric and standard error to ``rel``."""
    assert a["dataset"] == b["dataset"]
    ma, mb = a["metrics"], b["metrics"]
    for key in ("num_tokens", "num_invalid", "num_documents"):
        assert ma[key] == mb[key], key
    for key in RATIOS + tuple(k for k in ma if k.endswith("_stderr")):
        x, y = ma[key], mb[key]
        assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rel, abs_tol=1e-12), (key, x, y)
    ta, tb = _table(a), _table(b)
    assert np.allclose(ta, tb, rtol=rel, atol=1e-9)


SCORE_FLAGS = ("--seq-length", 256, "--concurrency", 2, "--timeout", 120, "--backoff", 0.05)
#: The "sleep" fault: the answer comes after the client's --timeout (never, in practice).
NEVER = 3600


def cli(*args) -> subprocess.CompletedProcess:
    """``hesnr ARGS`` in this process (a subprocess would import megatron-core again each time)."""
    import contextlib
    import io

    from megatron_hesnr.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, "", err.getvalue())


def _score_server(score_set, url, out, *extra):
    return cli("score", score_set, "--server", url, "--jsonl", out, *SCORE_FLAGS, *extra)


# ------------------------------------------------------------------ --server: faults and resuming
@pytest.fixture(scope="module")
def reference_record(score_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    with FakeServer() as srv:
        r = _score_server(score_set, srv.url, out)
    assert r.returncode == 0, r.stderr
    (rec,) = _records(out)
    assert not Path(str(out) + ".progress.json").exists()
    assert rec["config"]["data"]["num_windows"] > rec["metrics"]["num_documents"]  # windows, not whole trajectories
    return rec


def _windows_per_trajectory(prefix: Path, seq_length: int = 256) -> dict[int, int]:
    """Windows the Megatron pass's planner gives each trajectory (what a run sends per trajectory)."""
    from collections import Counter

    from megatron_hesnr.data.dataset import PreparedDataset
    from megatron_hesnr.evaluation.eval_pass import plan_set

    wset = plan_set("traj", PreparedDataset(str(prefix)), seq_length, "window", seq_length // 2)
    return dict(Counter(doc for doc, _ in wset.windows))


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("hesnr score:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("fault, match", [
    ("500", "HTTP 500"),
    ("sleep", "no answer within --timeout 20 s"),
    ("truncate", "truncated answer"),
    ("die", "cannot connect|connection lost"),
])
def test_server_fault_is_one_line_and_a_rerun_scores_every_trajectory_once(fault, match, score_set, tmp_path,
                                                                          reference_record):
    """Each fault, with no retries left, stops the run with one line; the progress file keeps what was done
    and a rerun (against a healthy server, on another port) completes: every trajectory exactly once."""
    out = tmp_path / "out.jsonl"
    with FakeServer(faults={18: fault}, sleep_s=NEVER) as srv:
        r = _score_server(score_set, srv.url, out, "--retries", 0, *(("--timeout", 20) if fault == "sleep" else ()))
    assert r.returncode == 2
    line = _one_line(r.stderr)
    import re

    assert re.search(match, line) and "rerun the same command to continue" in line, line
    done = json.loads(Path(str(out) + ".progress.json").read_text())["sets"]["traj"]["done"]
    assert not out.exists() and 1 <= len(done) < reference_record["metrics"]["num_documents"]
    with FakeServer() as srv:
        r = _score_server(score_set, srv.url, out)
        assert r.returncode == 0, r.stderr
        resent = [p for p in srv.prompts if p != [1, 2]]  # less the start-up probe
    windows = _windows_per_trajectory(score_set)
    assert len(resent) == sum(n for doc, n in windows.items() if doc not in done)
    (rec,) = _records(out)
    assert_records_agree(rec, reference_record, rel=1e-12)
    assert np.array_equal(_table(rec)[..., 0], _table(reference_record)[..., 0])  # token counts exact
    assert not Path(str(out) + ".progress.json").exists() and not Path(str(out) + ".progress.lock").exists()


def test_transient_faults_are_retried(score_set, tmp_path, reference_record):
    out = tmp_path / "out.jsonl"
    with FakeServer(faults={2: "500", 4: "truncate", 6: "sleep"}, sleep_s=NEVER) as srv:
        # Three faults may all land on one request's attempts (which request gets which number depends on
        # timing): --retries 3 lets every request through; --timeout fits a healthy answer on a loaded box.
        r = _score_server(score_set, srv.url, out, "--retries", 3, "--timeout", 30)
    assert r.returncode == 0, r.stderr
    (rec,) = _records(out)
    assert_records_agree(rec, reference_record, rel=1e-12)


def test_client_killed_mid_run_resumes(score_set, tmp_path, reference_record):
    """SIGKILL of `hesnr score` itself after some trajectories: the rerun scores only the rest."""
    out = tmp_path / "out.jsonl"
    progress = Path(str(out) + ".progress.json")
    with FakeServer(delay_s=0.3) as srv:
        cmd = [sys.executable, "-m", "megatron_hesnr.cli", "score", str(score_set), "--server", srv.url,
               "--jsonl", str(out), *map(str, SCORE_FLAGS), "--concurrency", "1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 120
            while not progress.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert progress.exists(), "the run finished or failed before it could be killed"
        done = json.loads(progress.read_text())["sets"]["traj"]["done"]
        assert 1 <= len(done) < reference_record["metrics"]["num_documents"]
        before = len(srv.prompts)
        r = hesnr("score", score_set, "--server", srv.url, "--jsonl", out, *SCORE_FLAGS)
        assert r.returncode == 0, r.stderr
        resent = [p for p in srv.prompts[before:] if p != [1, 2]]
    assert "resuming" in r.stderr
    # the rerun sends no window of a finished trajectory and every window of the others (the killed run's
    # request in flight may still land in the server's list after the kill: at most one more)
    from megatron_hesnr.data.dataset import PreparedDataset
    from megatron_hesnr.evaluation.eval_pass import plan_set
    from megatron_hesnr.scoring.sets import window_targets

    ds = PreparedDataset(str(score_set))
    finished = {tuple(int(t) for t in window_targets(*ds[doc], w)[0])
                for doc, w in plan_set("traj", ds, 256, "window", 128).windows if doc in done}
    assert not finished & {tuple(p) for p in resent}
    windows = _windows_per_trajectory(score_set)
    assert 0 <= len(resent) - sum(n for doc, n in windows.items() if doc not in done) <= 1
    (rec,) = _records(out)
    assert_records_agree(rec, reference_record, rel=1e-12)
    assert np.array_equal(_table(rec)[..., 0], _table(reference_record)[..., 0])


def test_server_without_prompt_logprobs_is_refused(score_set, tmp_path):
    out = tmp_path / "out.jsonl"
    with FakeServer(faults={1: "no_logprobs"}) as srv:
        r = _score_server(score_set, srv.url, out)
    assert r.returncode == 2
    assert "no prompt_logprobs" in _one_line(r.stderr)
    assert not out.exists() and not Path(str(out) + ".progress.json").exists()


def test_second_writer_is_refused(score_set, tmp_path):
    from megatron_hesnr.scoring.progress import Progress

    out = tmp_path / "out.jsonl"
    held = Progress(str(out), {"x": 1})
    try:
        with FakeServer() as srv:
            r = _score_server(score_set, srv.url, out)
        assert r.returncode == 2 and "another `hesnr score` is writing it" in _one_line(r.stderr)
    finally:
        held.close()


def test_a_finished_score_run_lets_another_process_append(score_set, tmp_path):
    """A scoring run is the records file's writer only while it runs: once it has returned in this
    process, another process (the next `hesnr score`, a Megatron job) appends to the same file."""
    out = tmp_path / "out.jsonl"
    with FakeServer() as srv:
        assert _score_server(score_set, srv.url, out).returncode == 0
    (rec,) = _records(out)
    code = ("import json, sys; from megatron_hesnr.evaluation.records import append_records; "
            "append_records(sys.argv[1], [json.loads(sys.argv[2])])")
    r = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(rec)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(_records(out)) == 2


def test_rerun_with_other_settings_is_refused(score_set, tmp_path):
    out = tmp_path / "out.jsonl"
    with FakeServer(faults={2: "500"}) as srv:
        assert _score_server(score_set, srv.url, out, "--retries", 0).returncode == 2
        r = _score_server(score_set, srv.url, out, "--k", 8)
    assert r.returncode == 2 and "other settings (--k 10 then, 8 now)" in _one_line(r.stderr)


@pytest.mark.parametrize("args, match", [
    (["--hf", "/nonexistent", "--model", "x"], "--model: only with --server"),
    (["--server", "ftp://x"], "--server ftp://x: give an http"),
    (["--server", "http://127.0.0.1:9", "--retries", 0], "/v1/models failed 1 times, last: cannot connect"),
    (["--server", "http://127.0.0.1:9", "--k", 1], "--k: must be an integer >= 2"),
    (["--hf", "/nonexistent", "--k", 1], "--hf /nonexistent: no such directory"),   # MODEL_DIR first: no torch yet
    (["--hf", "/nonexistent", "--seq-length", 0], "--seq-length: must be >= 1"),
])
def test_bad_flags_are_one_line(args, match, score_set, tmp_path):
    r = cli("score", score_set, *args, "--jsonl", tmp_path / "o.jsonl")
    assert r.returncode == 2 and match in _one_line(r.stderr), r.stderr


def test_missing_prefix_is_named(tmp_path):
    r = cli("score", tmp_path / "nope", "--server", "http://127.0.0.1:9", "--jsonl", tmp_path / "o.jsonl")
    assert r.returncode == 2 and f"PREFIX {tmp_path / 'nope'}" in _one_line(r.stderr)


# ------------------------------------------------------------------ --hf and --server on the tiny model
def test_model_with_another_tokenizer_is_refused(score_set, tiny_model, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_model.iterdir():
        (other / f.name).symlink_to(f)
    tok = json.loads((tiny_model / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").unlink()
    (other / "tokenizer.json").write_text(json.dumps(tok))
    r = cli("score", score_set, "--hf", other, "--jsonl", tmp_path / "o.jsonl")
    line = _one_line(r.stderr)
    assert r.returncode == 2 and str(other / "tokenizer.json") in line and "tokenizer.json" in line
    assert "other token ids" in line


def test_hf_and_server_records_agree_and_compare_finds_no_difference(score_set, tiny_model, tmp_path):
    """--hf (transformers logits -> token_stats) and --server (a stand-in serving the same model's
    log-probabilities the way vLLM does) give the same record; `hesnr compare` sees no difference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def logits_fn(prompt):
        with torch.no_grad():
            return model(input_ids=torch.tensor([prompt])).logits[0]

    out = tmp_path / "both.jsonl"
    r = cli("score", score_set, "--hf", tiny_model, "--jsonl", out, "--seq-length", 256, "--run-name", "hf")
    assert r.returncode == 0, r.stderr
    with FakeServer(logits_fn, model=str(tiny_model)) as srv:
        r = _score_server(score_set, srv.url, out, "--run-name", "server", "--timeout", 60)
    assert r.returncode == 0, r.stderr
    hf, server = _records(out)
    assert hf["config"]["engine"] == {"kind": "hf"} and server["config"]["engine"]["kind"] == "server"
    assert hf["metrics"]["num_high_entropy"] > 0 and 0 < hf["metrics"]["topk_acc"] < 1
    assert_records_agree(hf, server)
    assert_compare_finds_no_difference(out, "hf/model", "server/model", tmp_path)


def assert_compare_finds_no_difference(path: Path, a: str, b: str, tmp_path: Path) -> None:
    """`hesnr compare` of two records of the same weights: every difference and its 95% interval within
    1e-4 of the value (its p-value is not used: differences at the 1e-9 level can still be consistent
    in sign over the trajectories)."""
    js = tmp_path / f"cmp-{a.replace('/', '_')}-{b.replace('/', '_')}.json"
    r = cli("compare", path, "--a", a, "--b", b, "--json", js)
    assert r.returncode == 0, r.stderr
    for metric, e in json.loads(js.read_text()).items():
        scale = max(abs(e["a"]), 1e-12)
        assert abs(e["diff"]) <= 1e-4 * scale and max(map(abs, e["ci"])) <= 1e-4 * scale, (metric, e)
