"""Reading and validating the JSONL evaluation records.

One JSON object per line, as written by the Megatron integration::

    {"iteration": 1000,                 # required, int >= 0: the training step
     "consumed_samples": 64000,         # optional int
     "checkpoint": "/ckpt/iter_0001000",  # optional str: matched against the scores CSV
     "run": "moe-32k",                  # optional str: one line per run in the figures
     "dataset": "swe-actions",          # optional str: records of different datasets never mix
     "time": "2026-11-27T01:00:00Z",    # optional str (ISO 8601, any UTC offset; none = UTC):
                                        #   the newest duplicate wins
     "config": {...},                   # optional: the integration's settings, kept as is
     "metrics": {"hesnr": ..., ...},    # required object: what was logged at evaluation time
     "state": {...}}                    # required: HESNRAccumulator.state_dict()

Extra fields are allowed and ignored.  The ``state`` is the source of truth: every
number in the report is recomputed from it with :class:`HESNRAccumulator`; the
logged ``metrics`` are only cross-checked (a disagreement is logged as a warning).

A line that is not valid JSON or fails validation is *bad*: it is skipped and
counted (with file, line number and reason), or raises :class:`RecordError` with
``strict=True``.  Blank lines are ignored.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..accumulator import HESNRAccumulator

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("iteration", "metrics", "state")
OPTIONAL_STR_FIELDS = ("checkpoint", "run", "dataset", "time")


class RecordError(ValueError):
    """A record that cannot be used; the message names the file, line and field."""


@dataclass
class BadLine:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class EvalRecord:
    """One validated evaluation record with its accumulator rebuilt from ``state``."""

    iteration: int
    metrics: dict
    accumulator: HESNRAccumulator
    checkpoint: str | None = None
    run: str | None = None
    dataset: str | None = None
    time: str | None = None
    consumed_samples: int | None = None
    config: dict | None = None
    source: str = ""
    """``path:line`` the record came from."""

    @property
    def run_name(self) -> str:
        return self.run if self.run is not None else ""

    @property
    def checkpoint_name(self) -> str:
        """The checkpoint's name: its ``checkpoint`` field, else Megatron's ``iter_%07d``."""
        return self.checkpoint if self.checkpoint is not None else f"iter_{self.iteration:07d}"

    @property
    def key(self) -> tuple[str, str, str]:
        """De-duplication key: (dataset, run, checkpoint)."""
        return (self.dataset or "", self.run_name, self.checkpoint_name)

    label: str = ""
    """Short unique name for tables and figures, set by :func:`read_records`:
    ``run/<last path component of checkpoint>``, the full name where that collides."""

    def long_label(self) -> str:
        return f"{self.run}/{self.checkpoint_name}" if self.run else self.checkpoint_name

    def short_label(self) -> str:
        base = Path(self.checkpoint_name.rstrip("/")).name or self.checkpoint_name
        return f"{self.run}/{base}" if self.run else base


@dataclass
class ReadResult:
    records: list[EvalRecord] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    """Sources of records superseded by a newer record of the same (dataset, run, checkpoint)."""
    lines_read: int = 0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_record(obj, source: str) -> EvalRecord:
    """Validate one decoded JSON value; raise :class:`RecordError` naming the field."""
    if not isinstance(obj, dict):
        raise RecordError(f"{source}: a record must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise RecordError(f"{source}: missing field(s) {', '.join(missing)}")
    it = obj["iteration"]
    if not _is_int(it) or it < 0:
        raise RecordError(f"{source}: field 'iteration' must be an integer >= 0, got {it!r}")
    cs = obj.get("consumed_samples")
    if cs is not None and (not _is_int(cs) or cs < 0):
        raise RecordError(f"{source}: field 'consumed_samples' must be an integer >= 0, got {cs!r}")
    for name in OPTIONAL_STR_FIELDS:
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise RecordError(f"{source}: field '{name}' must be a string, got {type(v).__name__}")
    if obj.get("checkpoint") == "":
        raise RecordError(f"{source}: field 'checkpoint' is empty")
    if not isinstance(obj["metrics"], dict):
        raise RecordError(f"{source}: field 'metrics' must be an object, got {type(obj['metrics']).__name__}")
    cfg = obj.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        raise RecordError(f"{source}: field 'config' must be an object, got {type(cfg).__name__}")
    state = obj["state"]
    if not isinstance(state, dict):
        raise RecordError(f"{source}: field 'state' must be an object (HESNRAccumulator.state_dict())")
    if obj.get("time") is not None:
        parse_time(obj["time"], source)
    try:
        # Every rule a state must satisfy lives in state_check (StateError is a ValueError).
        acc = HESNRAccumulator.from_state_dict(state)
    except ValueError as exc:
        raise RecordError(f"{source}: field 'state' is not a valid accumulator state: {exc}") from None
    rec = EvalRecord(
        iteration=it, metrics=obj["metrics"], accumulator=acc, checkpoint=obj.get("checkpoint"),
        run=obj.get("run"), dataset=obj.get("dataset"), time=obj.get("time"),
        consumed_samples=cs, config=cfg, source=source,
    )
    _cross_check(rec)
    return rec


def _cross_check(rec: EvalRecord) -> None:
    """Warn when the logged HE-SNR disagrees with the one the state gives."""
    logged = rec.metrics.get("hesnr")
    if not isinstance(logged, (int, float)) or isinstance(logged, bool):
        return
    again = rec.accumulator.compute()["hesnr"]
    if math.isnan(logged) and math.isnan(again):
        return
    if not math.isclose(logged, again, rel_tol=1e-6, abs_tol=1e-12):
        log.warning("%s: logged metrics.hesnr=%r but the state gives %r; the report uses the state",
                    rec.source, logged, again)


def parse_time(text: str, source: str = "") -> datetime:
    """An ISO 8601 ``time`` as an aware UTC datetime (no offset given: UTC)."""
    try:
        t = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise RecordError(f"{source}: field 'time' is not an ISO 8601 time: {text!r}") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _newer(a: EvalRecord, b: EvalRecord) -> bool:
    """Is ``a`` newer than ``b``? By ``time`` (as instants, whatever the offsets) when
    both have one and they differ, else by reading order."""
    if a.time is not None and b.time is not None:
        ta, tb = parse_time(a.time, a.source), parse_time(b.time, b.source)
        if ta != tb:
            return ta > tb
    return True  # read later


def read_records(paths, *, strict: bool = False) -> ReadResult:
    """Read, validate and de-duplicate records from JSONL files.

    A (dataset, run, checkpoint) seen twice keeps the newer record (``time``, else the later
    line) and lists the other in ``duplicates``.  Raises :class:`RecordError` on a
    bad line when ``strict``, and ``FileNotFoundError`` / ``OSError`` naming the file
    when one cannot be opened.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result = ReadResult()
    by_key: dict[tuple[str, str, str], EvalRecord] = {}
    for path in paths:
        path = Path(path)
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise OSError(f"cannot open records file {path}: {exc.strerror or exc}") from None
        with fh:
            # Binary lines, decoded one by one: a bad byte spoils only its own line.
            for lineno, raw in enumerate(fh, start=1):
                source = f"{path}:{lineno}"
                if not raw.strip():
                    continue
                result.lines_read += 1
                try:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise RecordError(f"{source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise RecordError(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                    rec = parse_record(obj, source)
                except RecordError as exc:
                    if strict:
                        raise
                    reason = str(exc)[len(source) + 2:] if str(exc).startswith(source) else str(exc)
                    result.bad_lines.append(BadLine(str(path), lineno, reason))
                    log.warning("skipping %s", exc)
                    continue
                old = by_key.get(rec.key)
                if old is None:
                    by_key[rec.key] = rec
                elif _newer(rec, old):
                    result.duplicates.append(old.source)
                    by_key[rec.key] = rec
                else:
                    result.duplicates.append(rec.source)
    result.records = sorted(by_key.values(), key=lambda r: (r.run_name, r.iteration, r.checkpoint_name))
    _set_labels(result.records)
    if result.duplicates:
        log.warning("%d duplicate record(s) of the same (dataset, run, checkpoint) superseded: %s",
                    len(result.duplicates), ", ".join(result.duplicates[:5]))
    return result


def _set_labels(records: list[EvalRecord]) -> None:
    short = [r.short_label() for r in records]
    seen: dict[str, int] = {}
    for s in short:
        seen[s] = seen.get(s, 0) + 1
    mixed = len({x.dataset for x in records}) > 1
    for r, s in zip(records, short):
        r.label = s if seen[s] == 1 else r.long_label()
        if r.dataset and mixed:
            r.label = f"{r.label} [{r.dataset}]"
