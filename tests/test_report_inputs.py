"""Bad input to the report: unreadable lines, unmatched scores, < 3 points, NaN metrics."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from report_synth import make_run, record_of, synth_stats, write_jsonl, write_scores
from scipy import stats

from megatron_hesnr import HESNRAccumulator
from megatron_hesnr.analysis import RecordError, analyse, read_records, read_scores
from megatron_hesnr.analysis.report import render_markdown, write_json
from megatron_hesnr.analysis.summary import AnalysisError


@pytest.fixture(scope="module")
def recs():
    return make_run(np.linspace(0, 1, 5), n=1500, seed=9)


def _bad_state(rec):
    r = json.loads(json.dumps(rec))
    r["state"]["hist"] = [row[:3] for row in r["state"]["hist"]]  # 3 bins instead of 512
    return r


def test_unreadable_lines_skipped_and_counted_or_fatal(tmp_path, recs):
    bad = [
        "{not json",
        json.dumps({"iteration": 5, "metrics": {}}),                       # missing state
        json.dumps(dict(recs[0], iteration="5")),                           # wrong type
        json.dumps(dict(recs[0], iteration=-1)),                            # negative
        json.dumps(_bad_state(recs[1])),                                    # wrong histogram shape
        json.dumps(dict(recs[0], state=dict(recs[0]["state"], version=99))),  # state version
        json.dumps([1, 2, 3]),                                              # not an object
        json.dumps(dict(recs[0], run=7)),                                   # run not a string
        "",                                                                 # blank: ignored
    ]
    path = write_jsonl(tmp_path / "r.jsonl", recs[:2], bad)
    with open(path, "ab") as f:
        f.write(b'{"iteration": 1, "x": "\xff\xfe"}\n')                     # not UTF-8
    read = read_records(path)
    assert len(read.records) == 2
    assert len(read.bad_lines) == 9
    reasons = [b.reason for b in read.bad_lines]
    assert "not valid JSON" in reasons[0]
    assert "missing field(s) state" in reasons[1]
    assert "'iteration'" in reasons[2] and "'iteration'" in reasons[3]
    assert "'state'" in reasons[4] and "shape" in reasons[4]
    assert "version" in reasons[5]
    assert "JSON object" in reasons[6]
    assert "'run'" in reasons[7]
    assert "UTF-8" in reasons[8]
    assert [b.line for b in read.bad_lines][:2] == [3, 4]
    with pytest.raises(RecordError, match=r"r\.jsonl:3: not valid JSON"):
        read_records(path, strict=True)
    summary = analyse(read, None, n_boot=0)
    assert len(summary["input"]["bad_lines"]) == 9
    assert any("9 unreadable record line(s) skipped" in n for n in summary["notes"])


def test_scores_repeated_rows_unmatched_and_ambiguous(tmp_path, recs):
    write_jsonl(tmp_path / "r.jsonl", recs)
    rows = [(recs[0]["checkpoint"], 0.30), (recs[0]["checkpoint"], 0.34), (recs[0]["checkpoint"], 0.32),
            ("iter_0002000", 0.40),            # basename of the checkpoint path
            ("3000", 0.45),                    # iteration number
            ("moe-32k/iter_0004000", 0.5),     # run/basename
            ("iter_0009000", 0.9),             # no such checkpoint
            ("bogus", "n/a"), ("", 0.1), ("iter_0005000", "nan")]  # bad rows
    write_scores(tmp_path / "s.csv", rows)
    table = read_scores(tmp_path / "s.csv")
    s0 = table.scores[recs[0]["checkpoint"]]
    assert s0.n == 3 and s0.mean == pytest.approx(0.32) and s0.std == pytest.approx(np.std([0.30, 0.34, 0.32], ddof=1))
    assert len(table.bad_lines) == 3 and {b.line for b in table.bad_lines} == {9, 10, 11}
    with pytest.raises(RecordError, match=r"s\.csv:9: 'score' is not a number"):
        read_scores(tmp_path / "s.csv", strict=True)
    summary = analyse(read_records(tmp_path / "r.jsonl"), table, n_boot=10)
    inp = summary["input"]
    assert inp["checkpoints_without_score"] == ["moe-32k/iter_0005000"]
    assert inp["scores_without_checkpoint"] == ["iter_0009000"]
    assert summary["n_scored"] == 4
    md = render_markdown(summary, [], tmp_path)
    assert "Checkpoints without a score" in md and "moe-32k/iter_0005000" in md
    assert "Scores without a checkpoint" in md and "iter_0009000" in md
    assert "Unreadable score rows" in md
    # Two runs with the same basename: a bare "iter_0001000" is ambiguous, not guessed.
    other = make_run([0.2, 0.4], n=800, seed=1, run="moe-128k")
    write_jsonl(tmp_path / "r2.jsonl", recs + other)
    write_scores(tmp_path / "s2.csv", [("iter_0001000", 0.3), ("moe-128k/iter_0002000", 0.4)])
    summary = analyse(read_records(tmp_path / "r2.jsonl"), read_scores(tmp_path / "s2.csv"), n_boot=0)
    assert "iter_0001000" in summary["input"]["ambiguous_scores"]
    assert summary["n_scored"] == 1


def test_missing_columns_and_files_name_the_problem(tmp_path, recs):
    (tmp_path / "s.csv").write_text("ckpt,value\na,1\n")
    with pytest.raises(RecordError, match="no 'checkpoint' column"):
        read_scores(tmp_path / "s.csv")
    with pytest.raises(OSError, match="cannot open records file .*nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    write_jsonl(tmp_path / "empty.jsonl", [], ["garbage"])
    with pytest.raises(AnalysisError, match="no usable evaluation record"):
        analyse(read_records(tmp_path / "empty.jsonl"))


def test_fewer_than_three_points_said_so(tmp_path, recs):
    write_jsonl(tmp_path / "r.jsonl", recs)
    write_scores(tmp_path / "s.csv", [(recs[0]["checkpoint"], 0.1), (recs[1]["checkpoint"], 0.2)])
    summary = analyse(read_records(tmp_path / "r.jsonl"), read_scores(tmp_path / "s.csv"), n_boot=10)
    for c in summary["correlations"]["all"].values():
        assert c["pearson"] is None and "fewer than 3 points (2)" in c["status"]
    assert any("fewer than 3 points" in n for n in summary["notes"])
    md = render_markdown(summary, [], tmp_path)
    assert "fewer than 3 points (2): no correlation" in md


def test_nan_metric_excluded_and_said_so(tmp_path, recs):
    # A checkpoint with no high-entropy token: HE-SNR and HE-PPL are NaN, PPL is not.
    gen = torch.Generator().manual_seed(3)
    s = synth_stats(1000, 0.5, gen)
    s.entropy = torch.where(s.valid, torch.full_like(s.entropy, 0.5), s.entropy)
    acc = HESNRAccumulator()
    acc.update(s)
    empty = record_of(acc, 6000)
    assert math.isnan(empty["metrics"]["hesnr"])
    all_recs = recs + [empty]
    write_jsonl(tmp_path / "r.jsonl", all_recs)
    scores = [0.1, 0.3, 0.2, 0.5, 0.4, 0.6]
    write_scores(tmp_path / "s.csv", [(r["checkpoint"], y) for r, y in zip(all_recs, scores)])
    summary = analyse(read_records(tmp_path / "r.jsonl"), read_scores(tmp_path / "s.csv"), n_boot=10)
    corr = summary["correlations"]["all"]
    assert corr["hesnr"]["n"] == 5 and corr["hesnr"]["excluded"] == 1
    assert corr["hesnr"]["excluded_labels"] == ["moe-32k/iter_0006000"]
    assert corr["ppl"]["n"] == 6 and corr["ppl"]["excluded"] == 0
    x = [HESNRAccumulator.from_state_dict(r["state"]).compute()["hesnr"] for r in recs]
    assert corr["hesnr"]["pearson"]["r"] == pytest.approx(stats.pearsonr(x, scores[:5]).statistic, abs=1e-12)
    assert any(n.startswith("HE-SNR is NaN at 1 checkpoint(s), excluded") for n in summary["notes"])
    # The JSON summary stays strict JSON (NaN -> null).
    write_json(summary, tmp_path / "summary.json")
    back = json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert back["checkpoints"][-1]["metrics"]["hesnr"] is None


def test_duplicates_datasets_and_categories(tmp_path, recs):
    newer = dict(recs[0], time="2026-11-28T00:00:00Z", metrics=dict(recs[0]["metrics"], note="re-run"))
    other = make_run([0.5], n=500, seed=4, dataset="other-data")
    write_jsonl(tmp_path / "r.jsonl", [newer] + recs + other)
    read = read_records(tmp_path / "r.jsonl")
    assert len(read.duplicates) == 1 and read.duplicates[0].endswith("r.jsonl:2")
    kept = [r for r in read.records if r.iteration == 1000 and r.dataset == "swe-actions"]
    assert kept[0].metrics.get("note") == "re-run"
    with pytest.raises(AnalysisError, match="--dataset"):
        analyse(read)
    summary = analyse(read, dataset="swe-actions", category="action", n_boot=0)
    assert len(summary["checkpoints"]) == 5 and summary["category"] == "action"
    with pytest.raises(AnalysisError, match="--category 'nope'"):
        analyse(read, dataset="swe-actions", category="nope")


@pytest.mark.parametrize("kw", [{"threshold": 1.0}, {"num_bins": 64}, {"k": 20}])
def test_mixed_accumulator_configs_are_refused(tmp_path, recs, kw):
    """Issue 16 case 7: HE-SNR of another k / threshold / bins is not correlated alongside."""
    gen = torch.Generator().manual_seed(8)
    acc = HESNRAccumulator(**kw)
    stats = synth_stats(800, 0.3, gen)
    stats.k = acc.config.k  # synthetic stats: say which k they stand for
    acc.update(stats)
    write_jsonl(tmp_path / "r.jsonl", recs + [record_of(acc, 7000)])
    with pytest.raises(AnalysisError, match="different accumulator configs") as e:
        analyse(read_records(tmp_path / "r.jsonl"), n_boot=0)
    assert "r.jsonl:" in str(e.value)
