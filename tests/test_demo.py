"""`hesnr demo`: the quick end-to-end run and the pieces it is made of."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_hesnr.accumulator import HESNRAccumulator
from megatron_hesnr.demo import sources
from megatron_hesnr.demo.proxy_score import action_groups, greedy_prefix, top1_by_document
from megatron_hesnr.demo.windows import make_windows
from conftest import REPO

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
    # One table row per checkpoint, in iteration order.
    its = [c["iteration"] for c in summary["checkpoints"]]
    assert its == sorted(its) and len(its) == 3
    for it in its:
        assert any(line.split()[:1] == [str(it)] for line in stdout.splitlines())


def test_quick_demo_records(quick_run):
    rc, out, _ = quick_run
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert [r["iteration"] for r in records] == [8, 16, 24]
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
            assert again[key] == m[key] or (math.isnan(again[key]) and math.isnan(m[key]))
        # Only action tokens are scored (prepare's default categories).
        assert set(m["by_category"]) == {"action"}
        # Per-trajectory sums: one row per held-out trajectory, stderrs in the record.
        n_docs = r["state"]["config"]["num_documents"]
        assert n_docs >= 2 and m["num_documents"] == n_docs
        assert math.isfinite(m["ppl_stderr"]) and m["ppl_stderr"] > 0
        assert math.isfinite(m["hesnr_stderr"]) or m["num_high_entropy"] == 0
    # The same held-out tokens at every checkpoint.
    assert len({r["metrics"]["num_tokens"] for r in records}) == 1


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
@pytest.mark.parametrize("n,seq,stride", [(2, 8, 4), (9, 8, 4), (10, 8, 8), (57, 8, 3), (100, 16, 16)])
def test_windows_score_every_target_once(n, seq, stride):
    rng = np.random.default_rng(n)
    tokens = rng.integers(0, 50, n)
    mask = rng.integers(0, 2, n)
    w = make_windows([(tokens, mask)], seq, stride)
    pos = w.position.numpy()
    scored = pos[pos >= 0]
    assert sorted(scored.tolist()) == list(range(1, n))          # each target once
    lab = w.labels.numpy()
    for i in range(w.num_windows):
        sel = pos[i] >= 0
        assert (lab[i][sel] == tokens[pos[i][sel]]).all()            # labels are the targets
        assert (w.mask.numpy()[i][sel] == mask[pos[i][sel]]).all()  # mask aligned to the targets
        assert (w.mask.numpy()[i][~sel] == 0).all()
    # Context of every scored target: all of it, or at least seq - stride tokens.
    for i in range(w.num_windows):
        for j in np.flatnonzero(pos[i] >= 0):
            assert j + 1 >= min(pos[i][j], seq - stride)


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


def test_top1_by_document_scatters_windows():
    tokens = np.arange(30)
    w = make_windows([(tokens, np.ones(30, int)), (tokens[:7], np.ones(7, int))], 8, 4)
    flags = w.position.numpy() % 2 == 0
    docs = top1_by_document(flags, w.doc.numpy(), w.position.numpy(), [30, 7])
    assert docs[0][1:].tolist() == [p % 2 == 0 for p in range(1, 30)]
    assert docs[1][1:].tolist() == [p % 2 == 0 for p in range(1, 7)]


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
