"""``hesnr compare`` and the report's stderr / differs-from-previous output, on records
written by the real accumulator with per-trajectory sums."""
from __future__ import annotations

import json

import pytest
import torch

import megatron_hesnr as mh
from megatron_hesnr.cli import main

from report_synth import record_of
from stderr_synth import as_token_stats, clustered_tokens

N_DOCS = 120


def _acc(shift: float, seed: int = 0, n_docs: int = N_DOCS, **cfg) -> mh.HESNRAccumulator:
    """The same trajectories and tokens for every ``shift`` (only p(y) moves)."""
    tok = clustered_tokens(n_docs, seed, mean_len=40, shift=shift)
    acc = mh.HESNRAccumulator(num_documents=n_docs, **cfg)
    acc.update(as_token_stats(tok), torch.ones(len(tok["doc"]), dtype=torch.long), torch.tensor(tok["doc"]))
    return acc


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture()
def records(tmp_path):
    recs = [record_of(_acc(0.0), 1000), record_of(_acc(0.0), 2000), record_of(_acc(0.4), 3000)]
    return _write(tmp_path / "r.jsonl", recs)


def test_compare_prints_table_and_writes_json(records, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = main(["compare", records, "--a", "1000", "--b", "moe-32k/iter_0003000", "--json", str(out),
               "--bootstrap", "500"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "120 shared trajectories, 500 paired resamples (seed 0)" in text
    res = json.loads(out.read_text())
    assert set(res) == {"hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "high_entropy_fraction"}
    for m, e in res.items():
        assert set(e) == {"a", "b", "diff", "ci", "p"}, m
        assert e["diff"] == pytest.approx(e["b"] - e["a"])
        assert e["ci"][0] <= e["diff"] <= e["ci"][1] and 0 < e["p"] <= 1
    # The planted change: higher p(y) -> higher HE-SNR, lower PPL, clearly significant.
    assert res["hesnr"]["diff"] > 0 and res["hesnr"]["p"] < 0.01 and res["hesnr"]["ci"][0] > 0
    assert res["ppl"]["diff"] < 0 and res["ppl"]["p"] < 0.01
    # The same tokens for both: |HE|/|M| does not move at all.
    assert res["high_entropy_fraction"]["diff"] == 0 and res["high_entropy_fraction"]["p"] == 1
    # a and b are the records' own values (every trajectory is shared).
    rec = [json.loads(line) for line in open(records)]
    assert res["hesnr"]["a"] == pytest.approx(rec[0]["metrics"]["hesnr"], rel=1e-12)
    # Seeded: the same numbers again; another seed moves the interval a little.
    main(["compare", records, "--a", "1000", "--b", "3000", "--json", str(tmp_path / "again.json"),
          "--bootstrap", "500"])
    assert json.loads((tmp_path / "again.json").read_text()) == res
    main(["compare", records, "--a", "1000", "--b", "3000", "--json", str(tmp_path / "s1.json"),
          "--bootstrap", "500", "--seed", "1"])
    assert json.loads((tmp_path / "s1.json").read_text())["hesnr"]["ci"] != res["hesnr"]["ci"]


def test_compare_identical_checkpoints_do_not_differ(records, tmp_path):
    out = tmp_path / "same.json"
    assert main(["compare", records, "--a", "1000", "--b", "2000", "--json", str(out), "--bootstrap", "200",
                 "--category", "action"]) == 0
    res = json.loads(out.read_text())
    assert all(e["diff"] == 0 and e["p"] == 1 for e in res.values())


def _refused(capsys, argv) -> str:
    rc = main(["compare", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("hesnr compare: error: "), err
    return err


def test_compare_refuses_what_cannot_be_paired(tmp_path, capsys, records):
    base = record_of(_acc(0.0), 1000)
    cases = {
        "records of different sets: moe-32k/iter_0001000 is dataset 'swe-actions'":
            record_of(_acc(0.1), 2000, dataset="swe-gym"),
        "records of different configs (moe-32k/iter_0001000 vs moe-32k/iter_0002000): threshold":
            record_of(_acc(0.1, threshold=1.0), 2000),
        "num_documents 120 vs 121": record_of(_acc(0.1, n_docs=121), 2000),
        "records of different data: trajectory 0 has": record_of(_acc(0.1, seed=5), 2000),
    }
    for i, (msg, other) in enumerate(cases.items()):
        path = _write(tmp_path / f"bad{i}.jsonl", [base, other])
        assert msg in _refused(capsys, [path, "--a", "1000", "--b", "2000"])
    untracked = mh.HESNRAccumulator()
    untracked.update(as_token_stats(clustered_tokens(5, 0)), None)
    path = _write(tmp_path / "untracked.jsonl", [base, record_of(untracked, 2000)])
    assert "has no per-trajectory sums" in _refused(capsys, [path, "--a", "1000", "--b", "2000"])
    assert "--a '7': no record of that checkpoint" in _refused(capsys, [records, "--a", "7", "--b", "2000"])
    two_runs = _write(tmp_path / "runs.jsonl", [base, record_of(_acc(0.1), 1000, run="other")])
    assert "--b '1000' is ambiguous" in _refused(capsys, [two_runs, "--a", "moe-32k/iter_0001000", "--b", "1000"])
    assert "--category 'tool'" in _refused(capsys, [records, "--a", "1000", "--b", "2000", "--category", "tool"])
    assert "--bootstrap must be >= 1" in _refused(capsys, [records, "--a", "1000", "--b", "2000", "--bootstrap", "0"])
    assert "cannot open records file" in _refused(capsys, [str(tmp_path / "nope.jsonl"), "--a", "1", "--b", "2"])


def test_report_shows_stderr_and_whether_each_checkpoint_differs(records, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", records, "--output-dir", str(out), "--bootstrap", "300"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["checkpoints"]
    assert all(r["metrics"]["hesnr_stderr"] > 0 and r["metrics"]["num_documents"] == N_DOCS for r in rows)
    assert rows[0]["vs_previous"] is None
    assert rows[1]["vs_previous"]["significant"] is False and rows[1]["vs_previous"]["p"] == 1
    assert rows[2]["vs_previous"]["significant"] is True and rows[2]["vs_previous"]["previous"] == rows[1]["label"]
    md = (out / "report.md").read_text()
    assert "| HE-SNR ± SE | differs from previous (HE-SNR) |" in md
    assert f"{rows[2]['metrics']['hesnr']:.4g} ± " in md and "**yes** (+" in md and "| no (+0, p=1) |" in md
    assert (out / "metrics_vs_step.png").stat().st_size > 0


def test_report_without_per_trajectory_sums_says_so(tmp_path):
    recs = []
    for it in (1000, 2000):
        acc = mh.HESNRAccumulator()
        acc.update(as_token_stats(clustered_tokens(20, it, mean_len=20)), None)
        recs.append(record_of(acc, it))
    out = tmp_path / "rep"
    assert main(["report", _write(tmp_path / "u.jsonl", recs), "--output-dir", str(out), "--bootstrap", "50",
                 "--no-figures"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all(r["vs_previous"] is None and "hesnr_stderr" not in r["metrics"] for r in summary["checkpoints"])
    assert any("2 record(s) without per-trajectory sums" in n for n in summary["notes"])


def test_compare_of_an_empty_category_says_it_is_empty(records, capsys):
    """Every token of these records is an action token: --category thought has nothing to compare."""
    err = _refused(capsys, [records, "--a", "1000", "--b", "2000", "--category", "thought"])
    assert "scored no thought token: category 'thought' is empty" in err and "share no" not in err, err
    assert "iter_0001000" in err and "r.jsonl" in err, err
