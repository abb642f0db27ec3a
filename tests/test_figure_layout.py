"""The report's figures are legible: no tick labels overlap, point labels avoid each other,
and the score axis says what the score is (``hesnr report --score-label``)."""
from __future__ import annotations

import numpy as np
import pytest
from report_synth import make_run, write_jsonl, write_scores

from megatron_hesnr.analysis import figures
from megatron_hesnr.analysis.records import read_records
from megatron_hesnr.analysis.scores import read_scores
from megatron_hesnr.analysis.summary import analyse
from megatron_hesnr.cli import main


def _summary(tmp_path, runs, *, label=None, n_boot=30):
    paths, rows = [], []
    for i, (name, qualities, step) in enumerate(runs):
        recs = make_run(qualities, n=600, seed=10 + i, run=name, step=step)
        paths.append(write_jsonl(tmp_path / f"{name}.jsonl", recs))
        rows += [(r["checkpoint"], 0.1 + 0.5 * r["metrics"]["hesnr"] + 0.01 * (j % 3)) for j, r in enumerate(recs)]
    scores = write_scores(tmp_path / "scores.csv", rows)
    read = read_records(paths)
    summary = analyse(read, read_scores(scores), category="all", n_boot=n_boot, seed=0)
    summary["score_label"] = label
    hists = {r.label: r.accumulator.histogram(None) for r in read.records}
    return summary, hists


CASES = {
    # like the demo: five checkpoints of one run
    "few": [("demo", np.linspace(0, 1, 5), 60)],
    # many checkpoints, large step numbers, two runs whose points crowd together
    "many": [("moe-32k", np.linspace(0, 1, 40), 12500), ("moe-128k", np.linspace(0.1, 0.9, 25), 20000)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tick_and_point_labels_do_not_overlap(tmp_path, case):
    summary, hists = _summary(tmp_path, CASES[case], label="SWE-bench Verified resolved rate")
    made = figures.make_figures(summary, hists)
    stems = [stem for stem, _, _ in made]
    assert {"metrics_vs_step", "entropy_histograms", "scatter", "threshold_sensitivity"} <= set(stems)
    n_labels = 0
    for stem, fig, placed in made:
        assert figures.tick_label_overlaps(fig) == [], stem
        assert figures.label_overlaps(placed, fig, draw=False) == [], stem
        renderer = fig.canvas.get_renderer()
        for ann in placed:  # inside its axes, never on top of the axes frame
            frame, box = ann.axes.get_window_extent(renderer), ann.get_window_extent(renderer)
            assert frame.x0 <= box.x0 + 0.5 and box.x1 <= frame.x1 + 0.5, (stem, ann.get_text())
            assert frame.y0 <= box.y0 + 0.5 and box.y1 <= frame.y1 + 0.5, (stem, ann.get_text())
        n_labels += len(placed)
        if stem.startswith("scatter"):
            assert {ax.get_ylabel() for ax in fig.axes if ax.get_visible()} == {"SWE-bench Verified resolved rate"}
    assert n_labels >= (60 if case == "few" else 150)  # labels are placed, not all dropped


def test_overlap_checks_can_fail():
    """The checks themselves see overlapping labels (so a passing test means something)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    ax = fig.subplots()
    ax.set_xticks(np.arange(40))
    ax.set_xticklabels([f"iteration {i:07d}" for i in range(40)])
    a = ax.annotate("label one", (0.5, 0.5))
    b = ax.annotate("label two", (0.5, 0.5))
    assert figures.tick_label_overlaps(fig) and figures.label_overlaps([a, b], fig)
    fig2 = Figure(figsize=(2, 2))
    ax2 = fig2.subplots()
    ax2.plot(np.arange(40) * 1e5, np.arange(40))
    figures._layout(fig2)
    assert figures.tick_label_overlaps(fig2) == []


def test_report_score_label_reaches_the_figures_and_report(tmp_path):
    recs = make_run(np.linspace(0, 1, 4), n=500, seed=3, run="r")
    write_jsonl(tmp_path / "r.jsonl", recs)
    write_scores(tmp_path / "s.csv", [(r["checkpoint"], r["metrics"]["hesnr"]) for r in recs])
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "r.jsonl"), "--scores", str(tmp_path / "s.csv"), "--output-dir", str(out),
                 "--bootstrap", "20", "--score-label", "pass@1 on my eval"]) == 0
    assert "- score: pass@1 on my eval" in (out / "report.md").read_text()
    assert "pass@1 on my eval" in (out / "scatter.svg").read_text()
    assert main(["report", str(tmp_path / "r.jsonl"), "--output-dir", str(out), "--score-label", " "]) == 2
