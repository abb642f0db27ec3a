"""One analysis of evaluation records (and optionally downstream scores) -> a summary dict.

The summary is plain data (JSON after :func:`jsonable`), consumed by ``figures``
and ``report``.  Every metric comes from the records' accumulator states.
"""
from __future__ import annotations

import logging
import math

from ..metric.ratios import metrics_from_sums
from ..metric.state_layout import SCALAR_FIELDS
from ..metric.stderr import ALPHA, paired_difference
from .compare import CompareError, check_comparable, shared_rows
from .correlation import correlate
from .records import EvalRecord, ReadResult
from .scores import ScoreTable, match_scores
from .thresholds import ValleyRule, named_thresholds, pooled_histogram, sweep_grid, valley_threshold

log = logging.getLogger(__name__)

#: (key in compute(), display name, direction: +1 higher is better, -1 lower is better, 0 none)
METRICS = (
    ("hesnr", "HE-SNR", +1),
    ("hesnr_topk", "HE-SNR (top-k q)", +1),
    ("he_ppl", "HE-PPL", -1),
    ("ppl", "PPL", -1),
    ("top1_acc", "top-1 accuracy", +1),
    ("high_entropy_fraction", "|HE|/|M|", 0),
)
ADAPTIVE_KEY = "hesnr_adaptive"
ADAPTIVE_NAME = "HE-SNR (adaptive eps)"
SIGN_CONVENTION = (
    "r is the correlation of the metric's raw value with the score. Direction: +1 = higher is "
    "better (HE-SNR, top-1 accuracy), -1 = lower is better (PPL, HE-PPL), 0 = none assumed "
    "(|HE|/|M|). agreement = direction x r is positive when the metric ranks checkpoints "
    "the way the score does."
)


class AnalysisError(ValueError):
    """Records that cannot be analysed together; the message says which and why."""


def _category_arg(category):
    return None if category in (None, "all") else category


def select_dataset(records: list[EvalRecord], dataset: str | None) -> list[EvalRecord]:
    names = sorted({r.dataset or "" for r in records})
    if dataset is not None:
        kept = [r for r in records if (r.dataset or "") == dataset]
        if not kept:
            raise AnalysisError(f"--dataset {dataset!r}: no record has it (datasets: {names})")
        return kept
    if len(names) > 1:
        raise AnalysisError(
            f"records come from {len(names)} datasets {names}: metrics of different evaluation "
            "data are not comparable; choose one with --dataset")
    return records


def _check_category(records: list[EvalRecord], category) -> None:
    if category is None:
        return
    lacking = [r.source for r in records if category not in r.state.config.category_names]
    if lacking:
        raise AnalysisError(f"--category {category!r}: not a category of the record(s) at "
                            f"{', '.join(lacking[:5])}")


def _check_one_config(records: list[EvalRecord]) -> None:
    """HE-SNR of different k, threshold or bins measure different things: never correlated together."""
    first: dict[tuple, str] = {}
    for r in records:
        c = r.state.config
        first.setdefault((c.k, c.threshold, c.num_bins), r.source)
    if len(first) > 1:
        listed = "; ".join(f"k={k}, threshold={t}, num_bins={b} (first at {src})" for (k, t, b), src in first.items())
        raise AnalysisError(f"records use {len(first)} different accumulator configs: {listed}. HE-SNR "
                            "values of different configs are not comparable; report them separately")


def checkpoint_row(rec: EvalRecord, category, rule: ValleyRule) -> dict:
    acc = rec.state
    cfg = acc.config
    m = metrics_from_sums(acc.sums(category))
    m.update(acc.uncertainty(category))   # num_documents and *_stderr when trajectories are tracked
    hist = acc.histogram(category)
    adaptive = valley_threshold(hist, cfg.threshold, rule)
    swept = acc.sweep([adaptive["threshold"]], category=category)[0]
    adaptive.update(edge=swept["edge"], hesnr=swept["hesnr"], num_high_entropy=swept["num_high_entropy"])
    m[ADAPTIVE_KEY] = swept["hesnr"]
    return {
        "label": rec.label or rec.long_label(), "run": rec.run_name, "checkpoint": rec.checkpoint_name,
        "iteration": rec.iteration, "consumed_samples": rec.consumed_samples,
        "dataset": rec.dataset, "time": rec.time, "source": rec.source,
        "config": {"k": cfg.k, "threshold": cfg.threshold, "num_bins": cfg.num_bins},
        "metrics": m, "adaptive": adaptive, "score": None, "vs_previous": None,
    }


def _vs_previous(records: list[EvalRecord], rows: list[dict], category) -> None:
    """``row["vs_previous"]``: HE-SNR against the run's previous checkpoint on the same
    trajectories, from the linearised paired standard error (closed form, O(trajectories);
    the paired bootstrap is ``hesnr compare``'s).  Left ``None`` without per-trajectory
    sums."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["run"], rows[i]["iteration"]))
    for prev, cur in zip(order, order[1:]):
        if rows[prev]["run"] != rows[cur]["run"] or any(
                records[i].state.config.num_documents is None for i in (prev, cur)):
            continue
        entry = {"previous": rows[prev]["label"]}
        try:
            check_comparable(records[prev], records[cur], category)
            rows_a, rows_b, _ = shared_rows(records[prev], records[cur], category)
            res = paired_difference(rows_a, rows_b, SCALAR_FIELDS, "hesnr")
            entry.update(status="ok", diff=res["diff"], se=res["se"], ci=res["ci"], p=res["p"],
                         significant=bool(res["p"] < ALPHA))
        except CompareError as exc:  # e.g. the run's evaluation set changed between checkpoints
            entry["status"] = str(exc)
        rows[cur]["vs_previous"] = entry


def _correlations(rows: list[dict], n_boot: int, seed: int) -> dict:
    scored = [r for r in rows if r["score"] is not None]
    y = [r["score"]["mean"] for r in scored]
    out = {}
    for key, name, direction in METRICS + ((ADAPTIVE_KEY, ADAPTIVE_NAME, +1),):
        x = [r["metrics"][key] for r in scored]
        c = correlate(x, y, n_boot=n_boot, seed=seed, direction=direction)
        c["name"] = name
        c["excluded_labels"] = [r["label"] for r, v in zip(scored, x) if not math.isfinite(v)]
        out[key] = c
    return out


def _sensitivity(records, rows, category, n_boot, seed, rule) -> dict:
    scored = [(rec, row) for rec, row in zip(records, rows) if row["score"] is not None]
    # The grid follows the smallest k (every threshold must lie below ln k of every record).
    cfg = min((r.state.config for r in records), key=lambda c: c.k)
    grid = sweep_grid(cfg.k, cfg.num_bins, cfg.threshold)
    named = {round(v, 12) for _, v in named_thresholds(cfg.threshold)}
    y = [row["score"]["mean"] for _, row in scored]
    per_ckpt = [rec.state.sweep([v for _, v in grid], category=category) for rec, _ in scored]
    entries = []
    for i, (name, eps) in enumerate(grid):
        x = [sw[i]["hesnr"] for sw in per_ckpt]
        is_named = round(eps, 12) in named
        c = correlate(x, y, n_boot=n_boot if is_named else 0, seed=seed, direction=+1)
        entries.append({
            "name": name, "threshold": eps, "named": is_named,
            "default": math.isclose(eps, cfg.threshold, rel_tol=0, abs_tol=1e-12),
            "edges": sorted({sw[i]["edge"] for sw in per_ckpt}),
            "values": x, "correlation": c,
        })
    pooled = pooled_histogram([rec.state for rec, _ in scored] or [r.state for r in records],
                              category)
    pooled_rule = None
    if pooled is not None:
        pooled_rule = valley_threshold(pooled, cfg.threshold, rule)
        x = [rec.state.sweep([pooled_rule["threshold"]], category=category)[0]["hesnr"]
             for rec, _ in scored]
        pooled_rule["correlation"] = correlate(x, y, n_boot=n_boot, seed=seed, direction=+1)
        pooled_rule["values"] = x
    return {"labels": [row["label"] for _, row in scored], "entries": entries, "pooled_valley": pooled_rule}


def analyse(read: ReadResult, scores: ScoreTable | None = None, *, category: str | None = None,
            dataset: str | None = None, n_boot: int = 2000, seed: int = 0,
            rule: ValleyRule | None = None) -> dict:
    """Checkpoint table, correlations with the scores, threshold sensitivity, notes."""
    rule = rule or ValleyRule()
    category = _category_arg(category)
    if not read.records:
        raise AnalysisError("no usable evaluation record (every line was bad or the files are empty)")
    records = select_dataset(read.records, dataset)
    _check_category(records, category)
    notes: list[str] = []
    if read.bad_lines:
        notes.append(f"{len(read.bad_lines)} unreadable record line(s) skipped (listed under input).")
    if read.duplicates:
        notes.append(read.set_aside_line() + ".")
    if read.torn_lines:
        notes.append(f"{len(read.torn_lines)} last line(s) cut short by an interrupted writer skipped: "
                     + ", ".join(f"{b.path}:{b.line}" for b in read.torn_lines))
    _check_one_config(records)
    rows = [checkpoint_row(r, category, rule) for r in records]
    _vs_previous(records, rows, category)
    untracked = [r.label for r in records if r.state.config.num_documents is None]
    if untracked:
        notes.append(f"{len(untracked)} record(s) without per-trajectory sums: no standard errors and no "
                     "comparison with the previous checkpoint for them: " + ", ".join(untracked[:5]))

    match = None
    if scores is not None:
        match = match_scores(records, scores)
        for i, (name, s) in match.matched.items():
            rows[i]["score"] = {"name": name, "mean": s.mean, "std": s.std, "n": s.n}
        if match.records_without_score:
            notes.append(f"{len(match.records_without_score)} checkpoint(s) without a score: "
                         + ", ".join(match.records_without_score))
        if match.scores_without_record:
            notes.append(f"{len(match.scores_without_record)} score(s) without a checkpoint: "
                         + ", ".join(match.scores_without_record))
        for name, labels in match.ambiguous.items():
            notes.append(f"score {name!r} is ambiguous ({'; '.join(labels)}): not used")
        if scores.bad_lines:
            notes.append(f"{len(scores.bad_lines)} unreadable score row(s) skipped (listed under input).")
    else:
        notes.append("no scores given (--scores): no correlations computed.")

    for key, name, _ in METRICS:
        nan = [r["label"] for r in rows if not math.isfinite(r["metrics"][key])]
        if nan:
            notes.append(f"{name} is NaN at {len(nan)} checkpoint(s), excluded from its correlation: "
                         + ", ".join(nan))

    runs = sorted({r["run"] for r in rows})
    correlations = {}
    sensitivity = None
    n_scored = sum(r["score"] is not None for r in rows)
    if scores is not None:
        correlations["all"] = _correlations(rows, n_boot, seed)
        if len(runs) > 1:
            for run in runs:
                correlations[f"run:{run}"] = _correlations([r for r in rows if r["run"] == run], n_boot, seed)
        sensitivity = _sensitivity(records, rows, category, n_boot, seed, rule)
        if n_scored < 3:
            notes.append(f"only {n_scored} checkpoint(s) have a score: fewer than 3 points, "
                         "no correlation computed.")
    n_valley = sum(r["adaptive"]["status"] == "valley" for r in rows)
    if n_valley < len(rows):
        notes.append(f"adaptive threshold fell back to the fixed one at {len(rows) - n_valley} of "
                     f"{len(rows)} checkpoint(s) (reasons in the checkpoint table).")
    return {
        "category": category or "all",
        "dataset": records[0].dataset,
        "metrics": [{"key": k, "name": n, "direction": d} for k, n, d in METRICS]
        + [{"key": ADAPTIVE_KEY, "name": ADAPTIVE_NAME, "direction": +1}],
        "sign_convention": SIGN_CONVENTION,
        "valley_rule": {"lo": rule.lo, "hi": rule.hi, "sigma": rule.sigma, "margin": rule.margin,
                        "min_depth": rule.min_depth, "min_tokens": rule.min_tokens},
        "input": {
            "records": len(records), "lines_read": read.lines_read,
            "bad_lines": [str(b) for b in read.bad_lines], "duplicates": read.duplicates,
            "set_aside": len(read.duplicates), "torn_lines": [str(b) for b in read.torn_lines],
            "scores_file": scores.path if scores is not None else None,
            "score_bad_lines": [str(b) for b in scores.bad_lines] if scores is not None else [],
            "checkpoints_without_score": match.records_without_score if match else [],
            "scores_without_checkpoint": match.scores_without_record if match else [],
            "ambiguous_scores": match.ambiguous if match else {},
        },
        "runs": runs,
        "checkpoints": rows,
        "n_scored": n_scored,
        "correlations": correlations,
        "threshold_sensitivity": sensitivity,
        "notes": notes,
    }


def jsonable(obj):
    """Replace NaN/inf by None (strict JSON has neither), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return jsonable(obj.item())
    return obj
