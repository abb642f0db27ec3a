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

log = logging.getLogger(__name__)

FORMATS = ("png", "svg")
MAX_HIST_CURVES = 12


def _save(fig: Figure, out_dir: Path, stem: str) -> list[str]:
    # One tight_layout here instead of bbox_inches="tight" or a layout engine, which
    # lay the figure out again for every format (several times slower on a busy CPU).
    fig.tight_layout()
    paths = []
    for fmt in FORMATS:
        p = out_dir / f"{stem}.{fmt}"
        with atomic_file(p, "wb") as f:   # whole or not at all (part of the report's file set)
            fig.savefig(f, format=fmt, dpi=100)
        paths.append(str(p))
    return paths


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def plot_metrics_vs_step(summary: dict, out_dir: Path) -> list[str]:
    """Each metric against the training step, one line per run; every evaluated
    checkpoint is a marker, those with a downstream score are ringed and labelled."""
    metrics = summary["metrics"]
    rows = summary["checkpoints"]
    nr, nc = _grid(len(metrics))
    fig = Figure(figsize=(5.2 * nc, 3.4 * nr))
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    for ax, m in zip(axes, metrics):
        for run in summary["runs"]:
            rr = sorted((r for r in rows if r["run"] == run), key=lambda r: r["iteration"])
            it = [r["iteration"] for r in rr]
            v = [r["metrics"][m["key"]] for r in rr]
            se = [r["metrics"].get(m["key"] + "_stderr") for r in rr]
            if any(isinstance(s, float) and math.isfinite(s) for s in se):
                # 95% intervals over trajectories (trajectory-clustered stderr).
                yerr = [1.959964 * s if isinstance(s, float) and math.isfinite(s) else 0.0 for s in se]
                ax.errorbar(it, v, yerr=yerr, fmt="o-", ms=4, capsize=3, elinewidth=1, label=run or "(no run name)")
            else:
                ax.plot(it, v, "o-", ms=4, label=run or "(no run name)")
            for r, x, y in zip(rr, it, v):
                p = (r.get("vs_previous") or {})
                if m["key"] == "hesnr" and p.get("significant"):
                    ax.annotate("*", (x, y), textcoords="offset points", xytext=(-9, 2), fontsize=12, color="C3")
            for r, x, y in zip(rr, it, v):
                if r["score"] is not None and math.isfinite(y):
                    ax.plot([x], [y], "o", ms=10, mfc="none", mec="k", mew=1.2)
                    ax.annotate(f"{r['score']['mean']:.3g}", (x, y), textcoords="offset points",
                                xytext=(4, 6), fontsize=7)
        arrow = {1: "higher is better", -1: "lower is better", 0: ""}[m["direction"]]
        ax.set_title(f"{m['name']}" + (f" ({arrow})" if arrow else ""), fontsize=10)
        ax.set_xlabel("training step (iteration)")
        ax.grid(alpha=0.3)
        if m["key"] in ("ppl", "he_ppl"):
            vals = [r["metrics"][m["key"]] for r in rows if math.isfinite(r["metrics"][m["key"]])]
            if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
                ax.set_yscale("log")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if len(summary["runs"]) > 1:
        axes[0].legend(fontsize=8)
    bars = any(isinstance(r["metrics"].get("hesnr_stderr"), float) for r in rows)
    fig.suptitle(f"Metrics per checkpoint (category: {summary['category']}); ringed: has a score (annotated)"
                 + ("; bars: 95% interval over trajectories; red *: HE-SNR differs from the previous "
                    "checkpoint (paired p < 0.05)" if bars else ""), fontsize=11)
    return _save(fig, out_dir, "metrics_vs_step")


def _rebin_factor(n: int, target: int = 128) -> int:
    g = 1
    while n // g > target and n % (2 * g) == 0:
        g *= 2
    return g


def plot_histograms(summary: dict, hists: dict[str, dict], out_dir: Path) -> list[str]:
    """H_k density per checkpoint (colour = step), ln 1 .. ln 10 and the thresholds marked."""
    rows = sorted(summary["checkpoints"], key=lambda r: (r["iteration"], r["run"]))
    if len(rows) > MAX_HIST_CURVES:  # evenly spaced subset, first and last kept
        idx = np.unique(np.linspace(0, len(rows) - 1, MAX_HIST_CURVES).round().astype(int))
        rows = [rows[i] for i in idx]
    fig = Figure(figsize=(11, 4.8))
    ax = fig.subplots()
    its = [r["iteration"] for r in rows]
    lo, hi = min(its), max(its)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    kmax = 0.0
    for r in rows:
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
        t = 0.5 if hi == lo else (r["iteration"] - lo) / (hi - lo)
        ax.stairs(dens, edges, color=cmap(t), lw=1.0, label=r["label"])
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
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.2)
    return _save(fig, out_dir, "entropy_histograms")


def plot_scatter(summary: dict, out_dir: Path, group: str = "all") -> list[str]:
    """Metric vs. mean score (error bars: the scores' standard deviation over repeated
    evaluations; colour: run; label: iteration), least-squares line, correlations."""
    rows = [r for r in summary["checkpoints"] if r["score"] is not None]
    if not rows or group not in summary["correlations"]:
        return []
    if group != "all":
        rows = [r for r in rows if f"run:{r['run']}" == group]
    metrics = summary["metrics"]
    nr, nc = _grid(len(metrics))
    fig = Figure(figsize=(5.0 * nc, 3.8 * nr))
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    y = np.array([r["score"]["mean"] for r in rows])
    yerr = np.array([r["score"]["std"] for r in rows])
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
                ax.annotate(str(r["iteration"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        fit = linear_fit(x, y)
        if fit is not None and ok.sum() >= 2:
            xs = np.linspace(x[ok].min(), x[ok].max(), 50)
            ax.plot(xs, fit[0] * xs + fit[1], "-", color="C3", lw=1.2, label="least-squares fit")
        c = summary["correlations"][group][m["key"]]
        if c["status"] == "ok":
            sub = (f"Pearson {c['pearson']['r']:+.3f}, Spearman {c['spearman']['r']:+.3f}, "
                   f"Kendall {c['kendall']['r']:+.3f} (n={c['n']})")
        else:
            sub = c["status"]
        ax.set_title(f"{m['name']}\n{sub}", fontsize=9)
        ax.set_xlabel(m["name"])
        ax.set_ylabel("downstream score")
        ax.grid(alpha=0.3)
    if len({r["run"] for r in rows}) > 1:
        axes[0].legend(fontsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    stem = "scatter" if group == "all" else "scatter_" + "".join(ch if ch.isalnum() else "_" for ch in group)
    return _save(fig, out_dir, stem)


def plot_threshold_sensitivity(summary: dict, out_dir: Path) -> list[str]:
    """Correlation of HE-SNR(eps) with the score over eps in [ln 2, ln 5]."""
    sens = summary.get("threshold_sensitivity")
    if not sens or not any(e["correlation"]["status"] == "ok" for e in sens["entries"]):
        return []
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
    ax.set_ylabel("correlation of HE-SNR(eps) with score")
    ax.set_title("Threshold sensitivity", pad=16)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "threshold_sensitivity")


def write_figures(summary: dict, hists: dict[str, dict], out_dir) -> list[str]:
    """All figures that the summary supports; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_metrics_vs_step(summary, out_dir)
    paths += plot_histograms(summary, hists, out_dir)
    if summary["correlations"]:
        for group in summary["correlations"]:
            paths += plot_scatter(summary, out_dir, group)
        paths += plot_threshold_sensitivity(summary, out_dir)
    log.info("wrote %d figure files to %s", len(paths), out_dir)
    return paths
