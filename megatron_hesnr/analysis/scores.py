"""Downstream scores (e.g. SWE-bench resolved rate after SFT) per checkpoint.

CSV with a header naming at least the columns ``checkpoint`` and ``score`` (other
columns are ignored).  Several rows for one checkpoint are repeated evaluations:
the table keeps their mean, sample standard deviation (ddof=1; 0 for one row) and
count.  Rows with an empty checkpoint or a non-numeric / non-finite score are bad:
skipped and counted, or fatal with ``strict=True``.

Matching a score's checkpoint name to a record (see :func:`match_scores`): the
name may be the record's full ``checkpoint`` field, its last path component
(``iter_0001000``), ``run/<that>``, the iteration number, or ``run/<iteration>``.
A name that fits records of more than one checkpoint is ambiguous and not used.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from .records import BadLine, EvalRecord, RecordError, check_regular

log = logging.getLogger(__name__)


@dataclass
class Score:
    mean: float
    std: float
    n: int
    values: list[float]


@dataclass
class ScoreTable:
    scores: dict[str, Score] = field(default_factory=dict)
    bad_lines: list[BadLine] = field(default_factory=list)
    path: str = ""


def read_scores(path, *, strict: bool = False) -> ScoreTable:
    path = Path(path)
    check_regular(path, "scores")
    try:
        # utf-8-sig: the byte-order mark that Excel writes is not part of the first column's name.
        fh = path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise OSError(f"cannot open scores file {path}: {exc.strerror or exc}") from None
    table = ScoreTable(path=str(path))
    raw: dict[str, list[float]] = {}
    with fh:
        try:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
        except UnicodeDecodeError as exc:
            raise RecordError(f"{path}: scores file is not UTF-8 ({exc.reason})") from None
        if header is None:
            raise RecordError(f"{path}: scores file is empty (expected a header 'checkpoint,score')")
        names = [h.strip().lower() if h else "" for h in header]
        for col in ("checkpoint", "score"):
            if col not in names:
                raise RecordError(f"{path}: scores file has no '{col}' column (header: {','.join(header)})")
        ci, si = header[names.index("checkpoint")], header[names.index("score")]
        try:
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                name = (row.get(ci) or "").strip()
                text = (row.get(si) or "").strip()
                reason = None
                if not name:
                    reason = "empty 'checkpoint'"
                else:
                    try:
                        value = float(text)
                        if not math.isfinite(value):
                            reason = f"non-finite 'score' {text!r}"
                    except ValueError:
                        reason = f"'score' is not a number: {text!r}"
                if reason is not None:
                    if strict:
                        raise RecordError(f"{path}:{line}: {reason}")
                    table.bad_lines.append(BadLine(str(path), line, reason))
                    log.warning("skipping %s:%d: %s", path, line, reason)
                    continue
                raw.setdefault(name, []).append(value)
        except UnicodeDecodeError as exc:
            raise RecordError(f"{path}: scores file is not UTF-8 ({exc.reason})") from None
        except csv.Error as exc:
            raise RecordError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    for name, values in raw.items():
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        table.scores[name] = Score(mean=mean, std=std, n=n, values=values)
    return table


def _aliases(rec: EvalRecord) -> set[str]:
    names = {rec.checkpoint_name, str(rec.iteration), f"iter_{rec.iteration:07d}"}
    if rec.checkpoint is not None:
        base = Path(rec.checkpoint.rstrip("/")).name
        if base:
            names.add(base)
    if rec.run:
        names |= {f"{rec.run}/{n}" for n in list(names)}
    return names


@dataclass
class ScoreMatch:
    matched: dict[int, tuple[str, Score]]
    """index into the records list -> (score name, score)"""
    records_without_score: list[str]
    scores_without_record: list[str]
    ambiguous: dict[str, list[str]]
    """score name -> labels of the several records it could mean"""


def match_scores(records: list[EvalRecord], table: ScoreTable) -> ScoreMatch:
    """Pair scores with records.  An exact ``checkpoint`` match wins over aliases."""
    exact: dict[str, list[int]] = {}
    alias: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        exact.setdefault(r.checkpoint_name, []).append(i)
        if r.run:
            exact.setdefault(f"{r.run}/{r.checkpoint_name}", []).append(i)
        for a in _aliases(r):
            alias.setdefault(a, []).append(i)
    matched: dict[int, tuple[str, Score]] = {}
    ambiguous: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name, score in table.scores.items():
        hits = exact.get(name) or alias.get(name) or []
        hits = sorted(set(hits))
        if not hits:
            unknown.append(name)
        elif len(hits) > 1:
            ambiguous[name] = [records[i].label for i in hits]
        elif hits[0] in matched:
            ambiguous[name] = [records[hits[0]].label + f" (already scored as {matched[hits[0]][0]!r})"]
        else:
            matched[hits[0]] = (name, score)
    missing = [r.label for i, r in enumerate(records) if i not in matched]
    return ScoreMatch(matched, missing, unknown, ambiguous)
