"""Figures of a summary (matplotlib, Agg canvas; each saved as PNG and SVG).

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot, so
no GUI backend and no global figure state are involved (safe in a training job).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..atomic_write import atomic_file
from .correlation import linear_fit
from .summary import ADAPTIVE_KEY

log = logging.getLogger(__name__)

FORMATS = ("png", "svg")
DEFAULT_SCORE_LABEL = "downstream score"
MAX_HIST_CURVES = 12


def score_label(summary: dict) -> str:
    """What the score axis shows: ``hesnr report --score-label``, else a neutral name."""
    return summary.get("score_label") or DEFAULT_SCORE_LABEL


def _canvas(fig: Figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _visible_ticklabels(ax, which: str = "x") -> list:
    """The tick labels matplotlib draws on ``ax`` (inside the view, non-empty text)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for tick in axis.get_major_ticks():
        loc = tick.get_loc()
        if loc is None or not (lo - 1e-12 * max(1.0, abs(lo)) <= loc <= hi + 1e-12 * max(1.0, abs(hi))):
            continue
        for lab in (tick.label1, tick.label2):
            if lab.get_visible() and lab.get_text():
                out.append(lab)
    return out


def _overlapping(boxes, pad: float = 0.0) -> bool:
    return any(a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def tick_label_overlaps(fig: Figure, draw: bool = True) -> list[str]:
    """``axes title: x`` (or ``y``) for every axes whose drawn tick labels overlap (after a draw)."""
    renderer = _canvas(fig)
    if draw:
        fig.canvas.draw()
    bad = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for which in ("x", "y"):
            boxes = [t.get_window_extent(renderer) for t in _visible_ticklabels(ax, which)]
            if _overlapping(boxes):
                bad.append(f"{ax.get_title()!r}: {which}")
    return bad


def _fit_ticks(fig: Figure) -> None:
    """Thin, then rotate, the x tick labels of every linear axes until none overlap."""
    from matplotlib.ticker import MaxNLocator

    renderer = _canvas(fig)
    fig.canvas.draw()
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_xscale() != "linear":
            continue
        integer = bool(getattr(ax, "_hesnr_integer_x", False))
        for attempt, nbins in enumerate((None, 6, 5, 4, 3, 2, 6, 4, 3, 2, 1)):
            boxes = [t.get_window_extent(renderer) for t in _visible_ticklabels(ax, "x")]
            if not _overlapping(boxes, pad=2.0):
                break
            if attempt == 6:  # thinning alone did not do: rotate, and thin again from 6 bins
                ax.tick_params(axis="x", labelrotation=35)
            if nbins is not None:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=integer, min_n_ticks=1))
            fig.canvas.draw()
        if ax.xaxis.get_major_ticks() and ax.xaxis.get_major_ticks()[0].label1.get_rotation():
            for tick in ax.xaxis.get_major_ticks():
                tick.label1.set_horizontalalignment("right")


def _layout(fig: Figure) -> None:
    # One tight_layout pass here instead of bbox_inches="tight" or a layout engine, which
    # lay the figure out again for every format (several times slower on a busy CPU).
    _canvas(fig)
    fig.tight_layout()
    _fit_ticks(fig)
    fig.tight_layout()  # rotated labels are taller
    _fit_ticks(fig)


def _save(fig: Figure, out_dir: Path, stem: str) -> list[str]:
    paths = []
    for fmt in FORMATS:
        p = out_dir / f"{stem}.{fmt}"
        with atomic_file(p, "wb") as f:   # whole or not at all (part of the report's file set)
            fig.savefig(f, format=fmt, dpi=fig.dpi)
        paths.append(str(p))
    return paths


# Candidate offsets (points) of a point label from its point, nearest first: up-right,
# up-left, down-right, down-left, right, left, above, below, at a few distances that keep
# the label next to its point (a label further away would be read as another point's).
_DIRECTIONS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_RADII = (5, 9, 14)
_MARKER = 4.5  # points: half the side of the square a labelled point keeps free


def _obstacles(ax, renderer) -> tuple[np.ndarray, list]:
    """What a label on ``ax`` must not touch, in display pixels: the segments of its lines and
    error bars (``[n, 4]``: x0, y0, x1, y1) and the boxes of its markers and legend."""
    px = ax.figure.dpi / 72.0
    segs, boxes = [], []
    for line in ax.lines:
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.column_stack([line.get_xdata(orig=False), line.get_ydata(orig=False)])
                                             .astype(np.float64)) if len(line.get_xdata()) else np.zeros((0, 2))
        if line.get_linestyle() not in ("None", "none", "", " ") and len(xy) > 1:
            segs.append(np.hstack([xy[:-1], xy[1:]]))
        if line.get_marker() not in (None, "None", "none", "", " "):
            half = (line.get_markersize() / 2 + line.get_markeredgewidth() / 2) * px
            boxes += [(X - half, Y - half, X + half, Y + half) for X, Y in xy if math.isfinite(X) and math.isfinite(Y)]
    for coll in ax.collections:  # error bars (LineCollection)
        if coll.get_visible() and hasattr(coll, "get_segments"):
            tr = coll.get_transform()
            segs += [np.hstack([p[:-1], p[1:]]) for p in (tr.transform(np.asarray(seg, dtype=np.float64))
                                                         for seg in coll.get_segments()) if len(p) > 1]
    legend = ax.get_legend()
    if legend is not None and legend.get_visible():
        b = legend.get_window_extent(renderer)
        boxes.append((b.x0, b.y0, b.x1, b.y1))
    segs = np.vstack(segs) if segs else np.zeros((0, 4))
    return segs[np.isfinite(segs).all(axis=1)], boxes


def _box_crosses(box, segs: np.ndarray, pad: float = 1.0) -> bool:
    """Whether any segment touches ``box`` (x0, y0, x1, y1) grown by ``pad`` (Liang-Barsky clipping)."""
    if not len(segs):
        return False
    x0, y0, x1, y1 = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    sx, sy = segs[:, 0], segs[:, 1]
    dx, dy = segs[:, 2] - sx, segs[:, 3] - sy
    t0, t1 = np.zeros(len(segs)), np.ones(len(segs))
    ok = np.ones(len(segs), dtype=bool)
    for p, q in ((-dx, sx - x0), (dx, x1 - sx), (-dy, sy - y0), (dy, y1 - sy)):
        par = p == 0
        ok &= ~(par & (q < 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(par, 0.0, q / np.where(par, 1.0, p))
        t0 = np.where(~par & (p < 0), np.maximum(t0, r), t0)
        t1 = np.where(~par & (p > 0), np.minimum(t1, r), t1)
    return bool((ok & (t0 <= t1)).any())


def _boxes_touch(a, b, pad: float = 1.0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def place_labels(fig: Figure, labels: list) -> list:
    """Place point labels so that none overlaps another label, a point's marker, a line, an
    error bar, a legend or the axes edge.

    ``labels``: ``(ax, x, y, text, kwargs)`` in drawing priority. Each label takes the first
    free candidate offset (a fixed list, nearest first, all within 14 points of the point),
    so the result is deterministic; a label with no free candidate is left out (the point
    keeps its marker). Returns the placed ``Annotation`` objects.
    """
    renderer = _canvas(fig)
    fig.canvas.draw()
    px = fig.dpi / 72.0
    placed: dict = {}
    points: dict = {}
    obstacles: dict = {}
    for ax, x, y, _text, _kw in labels:
        if ax not in obstacles:
            obstacles[ax] = _obstacles(ax, renderer)
        if math.isfinite(x) and math.isfinite(y):
            X, Y = ax.transData.transform((x, y))
            points.setdefault(ax, []).append((X - _MARKER * px, Y - _MARKER * px, X + _MARKER * px, Y + _MARKER * px))
    out = []
    for ax, x, y, text, kw in labels:
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        frame = ax.get_window_extent(renderer)
        X, Y = ax.transData.transform((x, y))
        probe = ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 0), **kw)
        probe.set_in_layout(False)
        ext = probe.get_window_extent(renderer)
        w, h = ext.width, ext.height
        boxes = placed.setdefault(ax, [])
        own = (X - _MARKER * px, Y - _MARKER * px, X + _MARKER * px, Y + _MARKER * px)
        chosen = None
        for r in _RADII:
            for dx, dy in _DIRECTIONS:
                ox, oy = dx * r * px, dy * r * px
                x0 = X + ox - (w if dx < 0 else w / 2 if dx == 0 else 0)
                y0 = Y + oy - (h if dy < 0 else h / 2 if dy == 0 else 0)
                box = (x0, y0, x0 + w, y0 + h)
                if box[0] < frame.x0 or box[2] > frame.x1 or box[1] < frame.y0 or box[3] > frame.y1:
                    continue
                segs, marks = obstacles[ax]
                others = boxes + [p for p in points.get(ax, []) if p != own] + marks
                if any(_boxes_touch(box, b) for b in others) or _box_crosses(box, segs):
                    continue
                chosen = (dx, dy, r, box)
                break
            if chosen:
                break
        if chosen is None:
            probe.remove()
            log.debug("figure label %r at (%s, %s) left out: no free place", text, x, y)
            continue
        dx, dy, r, box = chosen
        probe.xyann = (dx * r, dy * r)
        probe.set_horizontalalignment({-1: "right", 0: "center", 1: "left"}[dx])
        probe.set_verticalalignment({-1: "top", 0: "center", 1: "bottom"}[dy])
        boxes.append(box)
        out.append(probe)
    return out


def label_overlaps(annotations, fig: Figure, draw: bool = True) -> list[tuple[str, str]]:
    """Pairs of placed labels (by text) whose drawn extents overlap (after a draw)."""
    renderer = _canvas(fig)
    if draw:
        fig.canvas.draw()
    ext = [(a.get_text(), a.axes, a.get_window_extent(renderer)) for a in annotations]
    return [(t1, t2) for i, (t1, ax1, b1) in enumerate(ext) for (t2, ax2, b2) in ext[i + 1:]
            if ax1 is ax2 and b1.overlaps(b2)]


def label_obstacle_hits(annotations, fig: Figure, draw: bool = True) -> list[str]:
    """Texts of placed labels whose drawn extent touches a line, an error bar, a marker or a
    legend of their axes (after a draw)."""
    renderer = _canvas(fig)
    if draw:
        fig.canvas.draw()
    bad = []
    for a in annotations:
        e = a.get_window_extent(renderer)
        box = (e.x0, e.y0, e.x1, e.y1)
        segs, marks = _obstacles(a.axes, renderer)
        if _box_crosses(box, segs, pad=0.0) or any(_boxes_touch(box, m, pad=0.0) for m in marks):
            bad.append(a.get_text())
    return bad


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def _finite_or_0(v) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _adaptive_note(rows: list[dict]) -> str:
    eps = [r["adaptive"]["threshold"] for r in rows if isinstance(r.get("adaptive"), dict)
           and isinstance(r["adaptive"].get("threshold"), float)]
    span = f"{min(eps):.3f}-{max(eps):.3f} nats" if eps else "per checkpoint"
    return (f"\neps chosen per checkpoint ({span}); no bars: the per-trajectory\n"
            "sums are kept at the fixed eps only")


def metrics_vs_step_figure(summary: dict):
    """Each metric against the training step, one line per run; every evaluated checkpoint
    is a marker, those with a score are ringed. The scores have a panel of their own (step
    against score), never written beside the metric points, where they would read as metric
    values."""
    labels = []
    metrics = summary["metrics"]
    rows = summary["checkpoints"]
    runs = summary["runs"]
    scored = [r for r in rows if r["score"] is not None]
    nr, nc = _grid(len(metrics) + bool(scored))
    fig = Figure(figsize=(5.2 * nc, 3.4 * nr + (0.3 if scored else 0)))
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    for ax, m in zip(axes, metrics):
        for ci, run in enumerate(runs):
            rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["iteration"])
            it = [r["iteration"] for r in rr]
            v = [r["metrics"][m["key"]] for r in rr]
            se = [r["metrics"].get(m["key"] + "_stderr") for r in rr]
            style = {"color": f"C{ci % 10}", "label": run or "(no run name)"}
            if any(isinstance(s, float) and math.isfinite(s) for s in se):
                # 95% intervals over trajectories (trajectory-clustered stderr).
                yerr = [1.959964 * s if isinstance(s, float) and math.isfinite(s) else 0.0 for s in se]
                ax.errorbar(it, v, yerr=yerr, fmt="o-", ms=4, capsize=3, elinewidth=1, **style)
            else:
                ax.plot(it, v, "o-", ms=4, **style)
            for r, x, y in zip(rr, it, v):
                p = (r.get("vs_previous") or {})
                if m["key"] == "hesnr" and p.get("significant"):
                    labels.append((ax, x, y, "*", {"fontsize": 12, "color": "C3"}))
            ring = [(x, y) for r, x, y in zip(rr, it, v) if r["score"] is not None and math.isfinite(y)]
            if ring:
                ax.plot(*zip(*ring), "o", ms=10, mfc="none", mec="k", mew=1.2)
        ax._hesnr_integer_x = True
        arrow = {1: "higher is better", -1: "lower is better", 0: ""}[m["direction"]]
        title = f"{m['name']}" + (f" ({arrow})" if arrow else "")
        if m["key"] == ADAPTIVE_KEY:
            title += _adaptive_note(rows)
        ax.set_title(title, fontsize=10 if m["key"] != ADAPTIVE_KEY else 9)
        ax.set_xlabel("training step (iteration)")
        ax.grid(alpha=0.3)
        if m["key"] in ("ppl", "he_ppl"):
            vals = [r["metrics"][m["key"]] for r in rows if math.isfinite(r["metrics"][m["key"]])]
            if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
                ax.set_yscale("log")
    if scored:
        ax = axes[len(metrics)]
        for ci, run in enumerate(runs):
            rr = sorted((r for r in scored if r["run"] == run), key=lambda r: r["iteration"])
            if rr:
                ax.errorbar([r["iteration"] for r in rr], [r["score"]["mean"] for r in rr],
                            yerr=[_finite_or_0(r["score"].get("std")) for r in rr], fmt="s-", ms=4, capsize=3, elinewidth=1,
                            color=f"C{ci % 10}", mfc="none", label=run or "(no run name)")
        ax._hesnr_integer_x = True
        ax.set_title(f"{score_label(summary)} (the score, not a metric)", fontsize=10)
        ax.set_xlabel("training step (iteration)")
        ax.set_ylabel(score_label(summary), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) + bool(scored):]:
        ax.set_visible(False)
    if len(runs) > 1:
        axes[0].legend(fontsize=8, loc="best")
    bars = any(isinstance(r["metrics"].get("hesnr_stderr"), float) for r in rows)
    title = f"Metrics per checkpoint (category: {summary['category']})"
    if scored:
        title += f"; ringed: has a {score_label(summary)} (its own panel: step against score)"
    if bars:
        title += ("\nbars: 95% interval over trajectories; red *: HE-SNR differs from the previous "
                  "checkpoint (paired p < 0.05)")
    fig.suptitle(title, fontsize=11)
    return fig, labels


def _rebin_factor(n: int, target: int = 64) -> int:
    g = 1
    while n // g > target and n % (2 * g) == 0:
        g *= 2
    return g


_LINESTYLES = ("-", "--", "-.", ":")


def histograms_figure(summary: dict, hists: dict[str, dict]):
    """H_k density per checkpoint (a distinct colour and line style each, in step order; at
    most 64 bins), ln 1 .. ln 10 and the thresholds marked; the legend sits right of the plot."""
    rows = sorted(summary["checkpoints"], key=lambda r: (r["iteration"], r["run"]))
    if len(rows) > MAX_HIST_CURVES:  # evenly spaced subset, first and last kept
        idx = np.unique(np.linspace(0, len(rows) - 1, MAX_HIST_CURVES).round().astype(int))
        rows = [rows[i] for i in idx]
    fig = Figure(figsize=(12, 4.8))
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    kmax = 0.0
    for i, r in enumerate(rows):
        h = hists[r["label"]]
        edges = np.asarray(h["edges"])
        counts = np.asarray(h["count"], dtype=np.float64)
        g = _rebin_factor(len(counts))
        if g > 1:  # fine bins are for the sweep; a plot reads better with <= ~128
            counts = counts.reshape(-1, g).sum(axis=1)
            edges = edges[::g]
        total = counts.sum()
        if total <= 0:
            continue
        dens = counts / (total * (edges[1] - edges[0]))
        ax.stairs(dens, edges, color=cmap(i % cmap.N), ls=_LINESTYLES[i % len(_LINESTYLES)], lw=1.3,
                  label=r["label"])
        kmax = max(kmax, float(edges[-1]))
    for j in range(1, 11):
        x = math.log(j)
        if x <= kmax + 1e-9:
            ax.axvline(x, color="grey", ls=":", lw=0.8)
            ax.text(x, 1.0, f"ln {j}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    thr = rows[0]["config"]["threshold"] if rows else None
    if thr is not None:
        ax.axvline(thr, color="red", ls="--", lw=1.0, label=f"fixed eps = {thr:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("top-k entropy H_k (nats)")
    ax.set_ylabel("density (log scale)")
    ax.set_title(f"H_k histograms across checkpoints (category: {summary['category']})", pad=16)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              title="checkpoint (step order)", title_fontsize=7)
    ax.grid(alpha=0.2)
    return fig, []


def fit_line(fit, x: np.ndarray, y_lo: np.ndarray, y_hi: np.ndarray, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The fit ``y = a x + b`` over the metric's range, cut where it leaves the scores' range
    (lowest minus its bar to highest plus its bar; never below 0 when no score is negative)."""
    a, b = fit
    xs = np.linspace(float(np.min(x)), float(np.max(x)), n)
    ys = a * xs + b
    lo, hi = float(np.nanmin(y_lo)), float(np.nanmax(y_hi))
    if np.nanmin(y_lo + (y_hi - y_lo) / 2) >= 0:  # scores (means) are all >= 0
        lo = max(lo, 0.0)
    keep = (ys >= lo) & (ys <= hi)
    return xs[keep], ys[keep]


def scatter_figure(summary: dict, group: str = "all"):
    """Metric vs. mean score (error bars: the scores' standard deviation over repeated
    evaluations; colour: run; label: iteration), least-squares line, correlations."""
    rows = [r for r in summary["checkpoints"] if r["score"] is not None]
    if not rows or group not in summary["correlations"]:
        return None
    labels = []
    ylabel = score_label(summary)
    if group != "all":
        rows = [r for r in rows if f"run:{r['run']}" == group]
    metrics = summary["metrics"]
    nr, nc = _grid(len(metrics))
    fig = Figure(figsize=(5.0 * nc, 3.8 * nr))
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    y = np.array([r["score"]["mean"] for r in rows])
    yerr = np.array([_finite_or_0(r["score"].get("std")) for r in rows], dtype=np.float64)
    for ax, m in zip(axes, metrics):
        x = np.array([r["metrics"][m["key"]] for r in rows], dtype=np.float64)
        ok = np.isfinite(x)
        runs = [r["run"] for r in rows]
        for ci, run in enumerate(sorted(set(runs))):
            sel = ok & np.array([rr == run for rr in runs])
            ax.errorbar(x[sel], y[sel], yerr=yerr[sel], fmt="o", ms=5, capsize=3, color=f"C{ci % 10}",
                        label=run or "(no run name)")
        for r, xi, yi in zip(rows, x, y):
            if math.isfinite(xi):
                labels.append((ax, float(xi), float(yi), str(r["iteration"]), {"fontsize": 7}))
        fit = linear_fit(x, y)
        if fit is not None and ok.sum() >= 2:
            xs, ys = fit_line(fit, x[ok], y[ok] - yerr[ok], y[ok] + yerr[ok])
            if len(xs):
                ax.plot(xs, ys, "-", color="C3", lw=1.2, label="least-squares fit")
        c = summary["correlations"][group][m["key"]]
        if c["status"] == "ok":
            sub = (f"Pearson {c['pearson']['r']:+.3f}, Spearman {c['spearman']['r']:+.3f}, "
                   f"Kendall {c['kendall']['r']:+.3f} (n={c['n']})")
        else:
            sub = c["status"]
        ax.set_title(f"{m['name']}\n{sub}", fontsize=9)
        arrow = {1: "higher is better", -1: "lower is better", 0: ""}[m["direction"]]
        ax.set_xlabel(m["name"] + (f" ({arrow})" if arrow else ""))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if len({r["run"] for r in rows}) > 1:
        axes[0].legend(fontsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{ylabel} against each metric ({'all runs' if group == 'all' else group}); "
                 "point labels: training step (where there is room)", fontsize=11)
    return fig, labels


def scatter_stem(group: str) -> str:
    return "scatter" if group == "all" else "scatter_" + "".join(ch if ch.isalnum() else "_" for ch in group)


def threshold_sensitivity_figure(summary: dict):
    """Correlation of HE-SNR(eps) with the score over eps in [ln 2, ln 5]."""
    sens = summary.get("threshold_sensitivity")
    if not sens or not any(e["correlation"]["status"] == "ok" for e in sens["entries"]):
        return None
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    eps = [e["threshold"] for e in sens["entries"]]
    for method, style in (("pearson", "o-"), ("spearman", "s-"), ("kendall", "^-")):
        r = [e["correlation"][method]["r"] if e["correlation"]["status"] == "ok" else np.nan
             for e in sens["entries"]]
        ax.plot(eps, r, style, ms=3, label=method.capitalize())
    for e in sens["entries"]:
        if e["default"]:
            ax.axvline(e["threshold"], color="red", ls="--", lw=1, label=f"default eps = {e['threshold']:.4f}")
    pv = sens.get("pooled_valley")
    if pv and pv["status"] == "valley":
        ax.axvline(pv["threshold"], color="purple", ls="-.", lw=1, label=f"pooled valley eps = {pv['threshold']:.4f}")
    for j in range(2, 6):
        ax.axvline(math.log(j), color="grey", ls=":", lw=0.8)
        ax.text(math.log(j), 1.0, f"ln {j}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("threshold eps (nats)")
    ax.set_ylabel(f"correlation of HE-SNR(eps)\nwith {score_label(summary)}")
    ax.set_title("Threshold sensitivity", pad=16)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig, []


def make_figures(summary: dict, hists: dict[str, dict]) -> list[tuple[str, Figure, list]]:
    """Every figure the summary supports, laid out: ``(stem, figure, placed point labels)``."""
    built = [("metrics_vs_step", metrics_vs_step_figure(summary)),
             ("entropy_histograms", histograms_figure(summary, hists))]
    if summary["correlations"]:
        built += [(scatter_stem(group), scatter_figure(summary, group)) for group in summary["correlations"]]
        built.append(("threshold_sensitivity", threshold_sensitivity_figure(summary)))
    out = []
    for stem, made in built:
        if made is None:
            continue
        fig, labels = made
        _layout(fig)
        out.append((stem, fig, place_labels(fig, labels) if labels else []))
    return out


def write_figures(summary: dict, hists: dict[str, dict], out_dir) -> list[str]:
    """All figures that the summary supports, as PNG and SVG; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig, _ in make_figures(summary, hists):
        paths += _save(fig, out_dir, stem)
    log.info("wrote %d figure files to %s", len(paths), out_dir)
    return paths
