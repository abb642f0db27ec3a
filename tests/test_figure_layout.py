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


LABEL = "SWE-bench Verified resolved rate"


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request, tmp_path_factory):
    """``(case, summary, made figures)`` of each case, built once for the checks below."""
    summary, hists = _summary(tmp_path_factory.mktemp(request.param), CASES[request.param], label=LABEL)
    return request.param, summary, figures.make_figures(summary, hists)


def test_tick_and_point_labels_do_not_overlap(built):
    case, summary, made = built
    stems = [stem for stem, _, _ in made]
    assert {"metrics_vs_step", "entropy_histograms", "scatter", "threshold_sensitivity"} <= set(stems)
    n_labels = 0
    for stem, fig, placed in made:
        assert figures.tick_label_overlaps(fig) == [], stem
        assert figures.label_overlaps(placed, fig, draw=False) == [], stem
        # no label on a marker, a line, an error bar or a legend
        assert figures.label_obstacle_hits(placed, fig, draw=False) == [], stem
        renderer = fig.canvas.get_renderer()
        for ann in placed:  # inside its axes, never on top of the axes frame
            frame, box = ann.axes.get_window_extent(renderer), ann.get_window_extent(renderer)
            assert frame.x0 <= box.x0 + 0.5 and box.x1 <= frame.x1 + 0.5, (stem, ann.get_text())
            assert frame.y0 <= box.y0 + 0.5 and box.y1 <= frame.y1 + 0.5, (stem, ann.get_text())
        n_labels += len(placed)
        if stem.startswith("scatter"):
            assert {ax.get_ylabel() for ax in fig.axes if ax.get_visible()} == {LABEL}
    print(case, "labels placed:", n_labels)
    # labels are placed, not all dropped: every point of the 5-checkpoint scatter (7 panels)
    assert n_labels >= (35 if case == "few" else 150)


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
    fig3 = Figure(figsize=(3, 3))
    ax3 = fig3.subplots()
    ax3.plot([0, 1], [0, 1], "-")
    c = ax3.annotate("on the line", (0.5, 0.5), ha="center", va="center")
    d = ax3.annotate("off the line", (0.05, 0.9))
    assert figures.label_obstacle_hits([c, d], fig3) == ["on the line"]
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


def _by_stem(made):
    return {stem: (fig, placed) for stem, fig, placed in made}


def test_scores_have_their_own_panel_and_the_figures_say_what_they_show(built):
    """Issue 30: score values are never written beside metric points; the adaptive panel says
    that its eps changes per point; the histogram legend is off the plot and its lines differ;
    the fit line stays within the scores."""
    _, summary, made = built
    made = _by_stem(made)
    fig, placed = made["metrics_vs_step"]
    assert {a.get_text() for a in placed} <= {"*"}, "only significance stars sit beside metric points"
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    score_ax = axes[f"{LABEL} (the score, not a metric)"]
    scored = sorted((r["iteration"], r["score"]["mean"]) for r in summary["checkpoints"] if r["score"] is not None)
    plotted = sorted((x, y) for line in score_ax.lines if line.get_marker() == "s"
                     for x, y in zip(line.get_xdata(), line.get_ydata()))
    assert np.allclose(plotted, scored)
    (adaptive,) = [t for t in axes if t.startswith("HE-SNR (adaptive eps)")]
    assert "eps chosen per checkpoint" in adaptive and "no bars" in adaptive
    eps = [r["adaptive"]["threshold"] for r in summary["checkpoints"]]
    assert f"{min(eps):.3f}-{max(eps):.3f} nats" in adaptive

    fig, _ = made["entropy_histograms"]
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= frame.x1, "the legend sits right of the plot, over no bar"
    curves = [p for p in ax.patches if p.get_label() and not p.get_label().startswith("_")]
    assert len(curves) == min(len(summary["checkpoints"]), figures.MAX_HIST_CURVES)
    styles = {(tuple(np.round(p.get_edgecolor(), 3)), p.get_linestyle()) for p in curves}
    assert len(styles) == len(curves), "every curve has its own colour and line style"
    assert len({tuple(np.round(p.get_edgecolor(), 3)) for p in curves}) == len(curves)
    assert all(len(p.get_data()[0]) <= 64 for p in curves)

    fig, _ = made["scatter"]
    lo = min(r["score"]["mean"] - r["score"]["std"] for r in summary["checkpoints"] if r["score"] is not None)
    for ax in fig.axes:
        for line in ax.lines:
            if line.get_label() == "least-squares fit":
                assert min(line.get_ydata()) >= max(lo, 0.0) - 1e-12


def test_fit_line_stays_within_the_scores():
    x = np.array([1.0, 2.0, 3.0, 100.0])          # one far PPL: the fit runs below 0 at x = 100
    y = np.array([0.30, 0.25, 0.20, 0.02])
    fit = (-0.05, 0.35)
    xs, ys = figures.fit_line(fit, x, y, y)
    assert len(xs) and ys.min() >= 0.0 and ys.max() <= 0.30 + 1e-12 and xs.max() < 100
    assert (fit[0] * 100 + fit[1]) < 0                  # ... which the full line would have shown
    neg = figures.fit_line((1.0, -0.5), np.array([0.0, 1.0]), np.array([-0.5, 0.5]), np.array([-0.5, 0.5]))[1]
    assert neg.min() < 0                                 # negative scores keep their range
