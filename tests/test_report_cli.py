"""`hesnr report` end to end: report.md, summary.json, PNG and SVG figures, exit codes."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from report_synth import make_run, write_jsonl, write_scores

from megatron_hesnr.cli import main


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    a = make_run(np.linspace(0, 1, 5), n=1500, seed=1, run="moe-32k")
    b = make_run(np.linspace(0.2, 0.8, 3), n=1500, seed=2, run="moe-128k", step=1500)
    write_jsonl(d / "a.jsonl", a, ["{truncated"])
    write_jsonl(d / "b.jsonl", b)
    rows = [(r["checkpoint"], 0.2 + r["metrics"]["hesnr"]) for r in a + b[:2]]
    rows += [(a[0]["checkpoint"], 0.25), ("moe-32k/iter_0099000", 0.7)]
    write_scores(d / "scores.csv", rows)
    out = d / "out"
    argv = ["report", str(d / "a.jsonl"), str(d / "b.jsonl"), "--scores", str(d / "scores.csv"),
            "--output-dir", str(out), "--bootstrap", "50", "--seed", "3", "--category", "action"]
    return d, out, argv


def test_report_writes_markdown_json_and_figures(report_run, capsys):
    d, out, argv = report_run
    assert main(argv) == 0
    terminal = capsys.readouterr().out
    assert "HE-SNR report: 8 checkpoint(s), 7 with a score" in terminal
    assert "Pearson r [CI]" in terminal and "(* default)" in terminal
    assert len(terminal.splitlines()) <= 30  # one screen

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 7 and summary["category"] == "action"
    assert set(summary["correlations"]) == {"all", "run:moe-128k", "run:moe-32k"}
    assert summary["input"]["checkpoints_without_score"] == ["moe-128k/iter_0004500"]
    assert summary["input"]["scores_without_checkpoint"] == ["moe-32k/iter_0099000"]
    assert len(summary["input"]["bad_lines"]) == 1

    stems = {"metrics_vs_step", "entropy_histograms", "scatter", "scatter_run_moe_32k",
             "scatter_run_moe_128k", "threshold_sensitivity"}
    for stem in stems:
        img = mpimg.imread(out / f"{stem}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(np.ptp(img[..., :3])) > 0  # not a blank canvas
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    assert {Path(p).name for p in summary["figures"]} == {f"{s}.{e}" for s in stems for e in ("png", "svg")}

    md = (out / "report.md").read_text()
    for section in ("## Correlation with the downstream score", "## Threshold sensitivity", "## Checkpoints",
                    "## Figures", "## Input problems", "Sign convention", "(default)**"):
        assert section in md
    assert "![entropy_histograms](entropy_histograms.png)" in md
    assert "moe-32k/iter_0099000" in md and "not valid JSON" in md


def test_strict_and_bad_arguments_exit_2_with_one_line(report_run, tmp_path, capsys):
    d, _, _ = report_run
    assert main(["report", str(d / "a.jsonl"), "--strict", "--output-dir", str(tmp_path), "--no-figures"]) == 2
    assert "a.jsonl:6: not valid JSON" in capsys.readouterr().err
    assert main(["report", str(d / "missing.jsonl"), "--output-dir", str(tmp_path)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["report", str(d / "b.jsonl"), "--bootstrap", "-1", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--bootstrap" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.md").exists()


def test_report_without_scores(report_run, tmp_path, capsys):
    d, _, _ = report_run
    assert main(["report", str(d / "b.jsonl"), "--output-dir", str(tmp_path)]) == 0
    assert "no correlation computed (no scores given)" in capsys.readouterr().out
    assert (tmp_path / "metrics_vs_step.png").exists() and (tmp_path / "entropy_histograms.svg").exists()
    assert not (tmp_path / "scatter.png").exists()
    assert "No scores were given" in (tmp_path / "report.md").read_text()
