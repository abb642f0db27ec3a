"""Paired comparison of two evaluation records of the same trajectories.

Both records must keep per-trajectory sums (``num_documents`` in the accumulator
config) of the same evaluation set under the same metric configuration.  The
trajectories compared are those both records scored; a trajectory scored in both
must have the same number of scored tokens in both (that count depends on the data
and the mask only, never on the model), otherwise the records evaluate different
data and are refused.  The numbers come from :func:`megatron_hesnr.metric.stderr.paired_bootstrap`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..metric.state_layout import SCALAR_FIELDS
from ..metric.stderr import DEFAULT_BOOTSTRAP, RATIO_METRICS, paired_bootstrap
from .records import EvalRecord


class CompareError(ValueError):
    """Two records that cannot be compared; the message (one line) says why."""


def _names(rec: EvalRecord) -> set[str]:
    ckpt = rec.checkpoint_name
    return {ckpt, ckpt.rstrip("/"), Path(ckpt.rstrip("/")).name, rec.label, rec.short_label(), rec.long_label(),
            f"iter_{rec.iteration:07d}", str(rec.iteration)}


def find_record(records: list[EvalRecord], name: str, flag: str) -> EvalRecord:
    """The one record called ``name`` (checkpoint path or its last component, report
    label ``run/iter_...``, ``iter_0001000`` or the iteration number)."""
    hits = [r for r in records if name in _names(r)]
    if not hits:
        known = ", ".join(sorted({r.label for r in records})[:8])
        raise CompareError(f"{flag} {name!r}: no record of that checkpoint (records: {known}"
                           f"{', ...' if len(records) > 8 else ''})")
    if len(hits) > 1:
        raise CompareError(f"{flag} {name!r} is ambiguous: {', '.join(r.label + ' (' + r.source + ')' for r in hits)}; "
                           "name it as run/checkpoint or choose --dataset")
    return hits[0]


def check_comparable(a: EvalRecord, b: EvalRecord, category) -> None:
    """Raise :class:`CompareError` unless ``a`` and ``b`` are the same set and config."""
    if (a.dataset or "") != (b.dataset or ""):
        raise CompareError(f"records of different sets: {a.short_label()} is dataset {a.dataset!r}, "
                           f"{b.short_label()} is dataset {b.dataset!r}")
    ca, cb = a.state.config, b.state.config
    for rec, cfg in ((a, ca), (b, cb)):
        if cfg.num_documents is None:
            raise CompareError(f"{rec.label} ({rec.source}) has no per-trajectory sums: evaluate with trajectory "
                               "indices (accumulator num_documents) to compare checkpoints")
    if ca != cb:
        da, db = asdict(ca), asdict(cb)
        diff = ", ".join(f"{k} {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])
        raise CompareError(f"records of different configs ({a.label} vs {b.label}): {diff}")
    if category is not None and category not in ca.category_names:
        raise CompareError(f"--category {category!r}: not a category of these records ({', '.join(ca.category_names)})")


def _present(rows: np.ndarray) -> np.ndarray:
    f = list(SCALAR_FIELDS)
    return (rows[:, f.index("num_tokens")] + rows[:, f.index("num_invalid")]) > 0


def shared_rows(a: EvalRecord, b: EvalRecord, category) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-trajectory rows of the trajectories both records scored, and what was dropped."""
    ra, rb = a.state.trajectory_rows(category), b.state.trajectory_rows(category)
    for rec, rows in ((a, ra), (b, rb)):
        if rows is None or not _present(rows).any():
            what = f"no {category} token: category {category!r} is empty" if category is not None else "no token"
            raise CompareError(f"{rec.label} ({rec.source}) scored {what}; nothing to compare")
    pa, pb = _present(ra), _present(rb)
    both = pa & pb
    f = list(SCALAR_FIELDS)
    scored = [f.index("num_tokens"), f.index("num_invalid")]
    ta, tb = ra[:, scored].sum(1), rb[:, scored].sum(1)
    differ = both & (ta != tb)
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise CompareError(f"records of different data: trajectory {i} has {int(ta[i])} scored tokens in {a.label} "
                           f"but {int(tb[i])} in {b.label} ({int(differ.sum())} trajectories differ)")
    if not both.any():
        raise CompareError(f"{a.label} and {b.label} share no scored trajectory")
    info = {"shared": int(both.sum()), "only_a": int((pa & ~pb).sum()), "only_b": int((pb & ~pa).sum())}
    return ra[both], rb[both], info


def compare_records(a: EvalRecord, b: EvalRecord, *, category=None, n_boot: int = DEFAULT_BOOTSTRAP,
                    seed: int = 0, metrics=None) -> dict:
    """``{"metrics": {metric: {"a", "b", "diff", "ci", "p", ...}}, "trajectories": {...}}``."""
    category = None if category in (None, "all") else category
    check_comparable(a, b, category)
    rows_a, rows_b, info = shared_rows(a, b, category)
    result = paired_bootstrap(rows_a, rows_b, SCALAR_FIELDS, n_boot=n_boot, seed=seed,
                              metrics=metrics or list(RATIO_METRICS))
    return {"a": a.label, "b": b.label, "category": category or "all", "dataset": a.dataset,
            "n_boot": n_boot, "seed": seed, "trajectories": info, "metrics": result}
