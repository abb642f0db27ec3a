"""Rendering a summary: Markdown report, JSON summary, one-screen terminal table."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic_write import write_text
from .correlation import fmt_r
from .summary import jsonable

MAX_LISTED = 50


def _md(text) -> str:
    """A Markdown table cell: '|' (as in |HE|/|M|) would end the cell."""
    return str(text).replace("|", "\\|")


def _f(v, spec=".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "NaN" if isinstance(v, float) and math.isnan(v) else ("-" if v is None else str(v))
    return format(v, spec)


def _p(entry) -> str:
    if not entry or entry.get("p") is None or math.isnan(entry["p"]):
        return "-"
    return f"{entry['p']:.2g}"


def _dir(d: int) -> str:
    return {1: "+ (higher better)", -1: "- (lower better)", 0: "0 (none)"}[d]


def _listing(title: str, items: list, lines: list[str]) -> None:
    if not items:
        return
    lines.append(f"**{title}** ({len(items)}):\n")
    for it in items[:MAX_LISTED]:
        lines.append(f"- `{it}`")
    if len(items) > MAX_LISTED:
        lines.append(f"- ... and {len(items) - MAX_LISTED} more (see summary.json)")
    lines.append("")


def correlation_table(corr: dict, metrics: list[dict]) -> list[str]:
    lines = ["| metric | direction | n | Pearson r [95% CI] | p | Spearman rho [95% CI] | p | "
             "Kendall tau-b [95% CI] | p | agreement (Pearson) | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in metrics:
        c = corr[m["key"]]
        agree = c["pearson"]["agreement"] if c["status"] == "ok" and m["direction"] else None
        lines.append(
            f"| {_md(m['name'])} | {_dir(m['direction'])} | {c['n']} | {fmt_r(c['pearson'])} | {_p(c['pearson'])} "
            f"| {fmt_r(c['spearman'])} | {_p(c['spearman'])} | {fmt_r(c['kendall'])} | {_p(c['kendall'])} "
            f"| {_f(agree, '+.3f')} | {c['status']}"
            + _md(f"; excluded (NaN): {', '.join(c['excluded_labels'])}" if c["excluded_labels"] else "") + " |")
    return lines


def sensitivity_table(sens: dict) -> list[str]:
    lines = ["| threshold | eps (nats) | bin edge used | n | Pearson r [95% CI] | Spearman rho [95% CI] | "
             "Kendall tau-b [95% CI] |", "|---|---|---|---|---|---|---|"]
    for e in sens["entries"]:
        if not e["named"]:
            continue
        c = e["correlation"]
        name = f"**{e['name']} (default)**" if e["default"] else e["name"]
        edges = ", ".join(f"{x:.4f}" for x in e["edges"]) or "-"
        lines.append(f"| {name} | {e['threshold']:.4f} | {edges} | {c['n']} | {fmt_r(c['pearson'])} "
                     f"| {fmt_r(c['spearman'])} | {fmt_r(c['kendall'])} |")
    pv = sens.get("pooled_valley")
    if pv is not None:
        c = pv["correlation"]
        how = "valley" if pv["status"] == "valley" else f"fallback to fixed: {pv['reason']}"
        lines.append(f"| adaptive, pooled valley ({how}) | {pv['threshold']:.4f} | {pv['threshold']:.4f} "
                     f"| {c['n']} | {fmt_r(c['pearson'])} | {fmt_r(c['spearman'])} | {fmt_r(c['kendall'])} |")
    return lines


def _se(m: dict, key: str) -> str:
    """``value`` or ``value ± stderr`` (trajectory-clustered, when the record has it)."""
    se = m.get(key + "_stderr")
    return _f(m[key]) + (f" ± {se:.2g}" if isinstance(se, float) and math.isfinite(se) else "")


def vs_previous_cell(v: dict | None) -> str:
    """Does HE-SNR differ from the run's previous checkpoint? (paired, linearised SE, p < 0.05)"""
    if not v:
        return "-"
    if v["status"] != "ok":
        return f"n/a ({v['status']})"
    return f"{'**yes**' if v['significant'] else 'no'} ({v['diff']:+.3g}, p={v['p']:.2g})"


def checkpoint_table(rows: list[dict]) -> list[str]:
    lines = ["| checkpoint | step | score (mean ± sd, n) | HE-SNR ± SE | differs from previous (HE-SNR) "
             "| HE-SNR top-k | HE-PPL | PPL | top-1 | \\|HE\\|/\\|M\\| | \\|M\\| | trajectories "
             "| adaptive eps | HE-SNR (adaptive) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, s, a = r["metrics"], r["score"], r["adaptive"]
        score = f"{s['mean']:.4g} ± {s['std']:.2g} ({s['n']})" if s else "-"
        ad = _md(f"{a['threshold']:.4f}" + ("" if a["status"] == "valley" else f" (fallback: {a['reason']})"))
        lines.append(
            f"| {_md(r['label'])} | {r['iteration']} | {score} | {_se(m, 'hesnr')} "
            f"| {_md(vs_previous_cell(r.get('vs_previous')))} | {_se(m, 'hesnr_topk')} "
            f"| {_se(m, 'he_ppl')} | {_se(m, 'ppl')} | {_se(m, 'top1_acc')} | {_se(m, 'high_entropy_fraction')} "
            f"| {m['num_tokens']} | {m.get('num_documents') or '-'} | {ad} | {_f(m['hesnr_adaptive'])} |")
    return lines


def render_markdown(summary: dict, figures: list[str], out_dir: Path) -> str:
    inp = summary["input"]
    lines = ["# HE-SNR report", "",
             f"- records: {inp['records']} checkpoint(s) from {inp['lines_read']} line(s) read; "
             f"{len(inp['bad_lines'])} unreadable, {len(inp['duplicates'])} set aside (re-evaluated iterations: "
             "the latest of each (run, set, iteration, checkpoint) kept)",
             f"- category: `{summary['category']}`; dataset: `{summary['dataset']}`; runs: "
             + (", ".join(f"`{r or '(none)'}`" for r in summary["runs"])),
             f"- scores: `{inp['scores_file']}`; checkpoints with a score: {summary['n_scored']}",
             f"- score: {_md(summary.get('score_label') or 'downstream score')}", ""]
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    lines += ["## Correlation with the downstream score", "", f"Sign convention: {summary['sign_convention']}",
              "Confidence intervals: percentile bootstrap over checkpoints "
              f"({next(iter(summary['correlations']['all'].values()))['n_boot'] if summary['correlations'] else 0}"
              " resamples); p-values from scipy.stats.", ""]
    if not summary["correlations"]:
        lines += ["No scores were given: no correlation computed.", ""]
    for group, corr in summary["correlations"].items():
        title = "All checkpoints" if group == "all" else f"Run `{group[4:]}`"
        lines += [f"### {title}", ""] + correlation_table(corr, summary["metrics"]) + [""]
    sens = summary["threshold_sensitivity"]
    if sens is not None:
        rule = summary["valley_rule"]
        lines += ["## Threshold sensitivity", "",
                  "HE-SNR(eps) from the stored H_k histograms (exact at bin edges; the edge used is listed). "
                  "The adaptive threshold is the valley of the smoothed H_k density between "
                  f"{rule['lo']:.4f} (ln 3) and {rule['hi']:.4f} (ln 4) (Gaussian sigma {rule['sigma']} nats, "
                  f"depth >= {rule['min_depth']:.0%}, >= {rule['min_tokens']} tokens), else the fixed one. "
                  "Per checkpoint it is the row HE-SNR (adaptive eps) above; pooled over the scored checkpoints "
                  "it is the last row here.", ""]
        lines += sensitivity_table(sens) + [""]
    lines += ["## Checkpoints", "",
              "± SE: standard error over trajectories (ratio linearisation; figures show 95% intervals, "
              "1.96 SE). *Differs from previous*: HE-SNR against the run's previous checkpoint on the "
              "same trajectories, paired linearised standard error of the difference and a normal "
              "two-sided p < 0.05 (one test per row, not corrected for multiple comparisons; "
              "`hesnr compare` gives every metric with a paired bootstrap).", ""]
    lines += checkpoint_table(summary["checkpoints"]) + [""]
    if figures:
        lines += ["## Figures", ""]
        for p in figures:
            if p.endswith(".png"):
                rel = Path(p).relative_to(out_dir) if Path(p).is_relative_to(out_dir) else Path(p)
                lines += [f"![{Path(p).stem}]({rel.as_posix()})", f"(SVG: `{rel.with_suffix('.svg').as_posix()}`)", ""]
    lines += ["## Input problems", ""]
    n0 = len(lines)
    _listing("Unreadable record lines (skipped)", inp["bad_lines"], lines)
    _listing("Records set aside (an iteration evaluated again: the latest kept)", inp["duplicates"], lines)
    _listing("Last lines cut short by an interrupted writer (skipped)", inp.get("torn_lines", []), lines)
    _listing("Unreadable score rows (skipped)", inp["score_bad_lines"], lines)
    _listing("Checkpoints without a score", inp["checkpoints_without_score"], lines)
    _listing("Scores without a checkpoint", inp["scores_without_checkpoint"], lines)
    _listing("Ambiguous score names (not used)",
             [f"{k}: {'; '.join(v)}" for k, v in inp["ambiguous_scores"].items()], lines)
    if len(lines) == n0:
        lines += ["None.", ""]
    return "\n".join(lines)


def write_json(summary: dict, path) -> None:
    """``summary.json``, written one checkpoint row at a time (a strict-JSON copy of one row in memory,
    never of the whole summary nor its text: a report of a million checkpoints holds its rows once)."""
    from ..atomic_write import atomic_file

    rows = summary.get("checkpoints", [])
    mark = "@@checkpoints@@"
    head, _, tail = json.dumps(jsonable(dict(summary, checkpoints=mark)), indent=1,
                               allow_nan=False).partition(json.dumps(mark))
    with atomic_file(path, "w") as f:
        f.write(head + "[")
        for i, row in enumerate(rows):
            text = json.dumps(jsonable(row), indent=1, allow_nan=False).replace("\n", "\n  ")
            f.write(("," if i else "") + "\n  " + text)
        f.write(("\n ]" if rows else "]") + tail + "\n")


def terminal_table(summary: dict) -> str:
    """About 25 lines: correlations (all checkpoints), the adaptive rows, input problems."""
    inp = summary["input"]
    out = [f"HE-SNR report: {inp['records']} checkpoint(s), {summary['n_scored']} with a score, "
           f"category {summary['category']}; {len(inp['bad_lines'])} bad line(s), "
           f"{len(inp['checkpoints_without_score'])} unscored, {len(inp['scores_without_checkpoint'])} "
           "score(s) without checkpoint"]
    corr = summary["correlations"].get("all")
    if corr:
        head = f"{'metric':<22}{'dir':>4}{'n':>4}  {'Pearson r [CI]':<26}{'Spearman':>9}{'Kendall':>9}{'p(P)':>9}"
        out += [head, "-" * len(head)]
        for m in summary["metrics"]:
            c = corr[m["key"]]
            if c["status"] != "ok":
                out.append(f"{m['name']:<22}{m['direction']:>+4d}{c['n']:>4}  {c['status']}")
                continue
            out.append(f"{m['name']:<22}{m['direction']:>+4d}{c['n']:>4}  {fmt_r(c['pearson']):<26}"
                       f"{c['spearman']['r']:>+9.3f}{c['kendall']['r']:>+9.3f}{_p(c['pearson']):>9}")
        sens = summary["threshold_sensitivity"]
        if sens:
            best = [e for e in sens["entries"] if e["named"] and e["correlation"]["status"] == "ok"]
            if best:
                out.append("threshold sweep (Pearson): " + ", ".join(
                    f"{e['name']}{'*' if e['default'] else ''} {e['correlation']['pearson']['r']:+.3f}" for e in best)
                    + "   (* default)")
    else:
        out.append("no correlation computed (no scores given)")
    for n in summary["notes"][:8]:
        out.append(("note: " + n)[:160])
    return "\n".join(out)


def write_report(summary: dict, figures: list[str], out_dir) -> dict:
    """report.md and summary.json in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    write_text(md, render_markdown(summary, figures, out_dir))
    js = out_dir / "summary.json"
    write_json(dict(summary, figures=figures), js)
    return {"markdown": str(md), "json": str(js)}
