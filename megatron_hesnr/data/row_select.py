"""Which dataset rows (trajectories) are prepared: ``--only-resolved``, ``--where``,
``--limit`` and ``--sample`` / ``--seed``.

A *row* is one trajectory: a JSONL line, a parquet row, one element of a JSON list of
rows, or a whole single-trajectory file (its top-level object). Field filters look at
the row's top-level fields only. The filters apply in this order and each counts the
rows it dropped (the manifest records them):

1. ``--only-resolved``: keep rows whose ``resolved`` (else ``target``) field is true or 1;
   a field that is null (outcome unknown) drops the row like false (counted under
   ``only_resolved``); a row with neither field is an error naming the file and row.
2. ``--where KEY=VALUE`` (repeatable): exact match on a top-level field. Strings compare
   as written; booleans match ``true``/``false``/``1``/``0``; numbers match numerically;
   null matches ``null``. A row without the field does not match.
3. ``--limit N``: the first N remaining rows, in input order (files sorted by path).
4. ``--sample N --seed S``: N remaining rows drawn uniformly without replacement with a
   seeded generator; the same inputs, filters, N and S always give the same rows.

3 and 4 need every candidate row first: ``hesnr prepare`` then reads the inputs once
to list the candidates (readable rows that pass 1 and 2) before preparing the chosen
ones.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from .readers.base import ReadError

RESOLVED_FIELDS = ("resolved", "target")
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


@dataclass(frozen=True)
class RowSelect:
    only_resolved: bool = False
    where: tuple = ()            # ((key, value string), ...)
    limit: int | None = None
    sample: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.sample is not None and self.sample < 1:
            raise ValueError("--sample must be >= 1")
        if self.limit is not None and self.sample is not None:
            raise ValueError("--limit and --sample exclude each other (use one)")

    @property
    def needs_candidates(self) -> bool:
        """True when rows can only be chosen after all candidates are known."""
        return self.limit is not None or self.sample is not None

    @property
    def active(self) -> bool:
        return self.only_resolved or bool(self.where) or self.needs_candidates

    def labels(self) -> list[str]:
        out = ["only_resolved"] if self.only_resolved else []
        out += [where_label(k, v) for k, v in self.where]
        if self.limit is not None:
            out.append("limit")
        if self.sample is not None:
            out.append("sample")
        return out

    def as_dict(self) -> dict:
        return {"only_resolved": self.only_resolved, "where": [{"key": k, "value": v} for k, v in self.where],
                "limit": self.limit, "sample": self.sample, "seed": self.seed if self.sample is not None else None}


def where_label(key: str, value: str) -> str:
    return f"where {key}={value}"


def parse_where(items) -> tuple:
    """``["KEY=VALUE", ...]`` -> ``((KEY, VALUE), ...)``; ValueError names the bad item."""
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--where {item!r}: expected KEY=VALUE")
        out.append((key.strip(), value))
    return tuple(out)


def resolved_of(row) -> bool:
    """The row's resolved flag; ReadError when it has none (or one that is not a flag)."""
    fields = row if isinstance(row, dict) else {}
    null = False
    for name in RESOLVED_FIELDS:
        value = fields.get(name)
        if value is None:
            null = null or name in fields
            continue
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ReadError(f"--only-resolved: field {name!r} is {value!r}, not true/false or 1/0")
    if null:   # present but null: the outcome is unknown, so the row is not known to be resolved
        return False
    raise ReadError(f"--only-resolved: row has no {' or '.join(repr(f) for f in RESOLVED_FIELDS)} field")


def field_matches(value, wanted: str) -> bool:
    if isinstance(value, str):
        return value == wanted
    if value is None:
        return wanted == "null"
    if isinstance(value, bool):
        w = wanted.strip().lower()
        return (w in _TRUE) if value else (w in _FALSE)
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == value
        except ValueError:
            return False
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False) == json.dumps(
            json.loads(wanted), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return False


def drop_reason(row, select: RowSelect | None) -> str | None:
    """Label of the first field filter that drops ``row`` (None: kept). ReadError when
    ``--only-resolved`` cannot tell."""
    if select is None:
        return None
    if select.only_resolved and not resolved_of(row):
        return "only_resolved"
    fields = row if isinstance(row, dict) else {}
    for key, value in select.where:
        if key not in fields or not field_matches(fields[key], value):
            return where_label(key, value)
    return None


def choose(candidates: list, select: RowSelect) -> tuple[set, int]:
    """Candidates (in input order) -> (chosen subset, how many were dropped)."""
    if select.limit is not None:
        chosen = candidates[:select.limit]
    elif select.sample is not None:
        n = min(select.sample, len(candidates))
        chosen = random.Random(select.seed).sample(candidates, n)
    else:
        chosen = candidates
    return set(chosen), len(candidates) - len(chosen)
