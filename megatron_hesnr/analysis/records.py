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
     "writer": {"job_id": "4242", "restart": 1},  # optional: who wrote it (Slurm job, requeues)
     "metrics": {"hesnr": ..., ...},    # required object: what was logged at evaluation time
     "state": {...}}                    # required: HESNRAccumulator.state_dict()

Extra fields are allowed and ignored.  The ``state`` is the source of truth: every
number in the report is recomputed from it (validated and held as numpy arrays by
:mod:`.record_state`, the accumulator's rules without torch); the logged ``metrics``
are only cross-checked (a disagreement is logged as a warning).

A line that is not valid JSON or fails validation is *bad*: it is skipped and
counted (with file, line number and reason), or raises :class:`RecordError` with
``strict=True``.  Blank lines are ignored.  The last line of a file that has no
newline and is not valid JSON is a record cut short by an interrupted writer: it is
skipped with a warning naming the file and line (never fatal).  A line longer than
``max_line_bytes`` is bad.  Only regular files are read (a FIFO or a device is
refused before it is opened).

One record is kept per (dataset, run, iteration, checkpoint): a requeued job that evaluates an
iteration again writes a later record, and the later one wins -- the higher
``writer.restart`` of the same ``writer.job_id``, else the later ``time`` when both
have one and they differ, else the one read later (files in the order given).  The
others are *set aside* and listed in :attr:`ReadResult.duplicates`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .json_members import top_level_members
from .record_state import RecordState, StateError, parse_state

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("iteration", "metrics", "state")
OPTIONAL_STR_FIELDS = ("checkpoint", "run", "dataset", "time")
#: Longest record line read (bytes); a record of 1M trajectories x 3 categories is ~350 MB.
MAX_LINE_BYTES = 1 << 30
SET_ASIDE_TEXT = ("record(s) of re-evaluated iterations (kept the latest of each (run, set, iteration, "
                  "checkpoint))")


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
    """One validated evaluation record; ``state`` holds its accumulator state as arrays."""

    iteration: int
    metrics: dict
    state: RecordState | None = None
    checkpoint: str | None = None
    run: str | None = None
    dataset: str | None = None
    time: str | None = None
    consumed_samples: int | None = None
    config: dict | None = None
    writer: dict | None = None
    source: str = ""
    """``path:line`` the record came from."""
    order: int = 0
    """Reading order over all files given (later = larger)."""
    offset: int = -1
    """Byte offset of the line in its file (to decode its state later)."""
    state_span: tuple[int, int] | None = None

    @property
    def accumulator(self):
        """The state as a :class:`~megatron_hesnr.HESNRAccumulator` (built on first use; imports torch)."""
        acc = self.__dict__.get("_accumulator")
        if acc is None:
            acc = self.__dict__["_accumulator"] = self.state.to_accumulator()
        return acc

    @property
    def run_name(self) -> str:
        return self.run if self.run is not None else ""

    @property
    def checkpoint_name(self) -> str:
        """The checkpoint's name: its ``checkpoint`` field, else Megatron's ``iter_%07d``."""
        return self.checkpoint if self.checkpoint is not None else f"iter_{self.iteration:07d}"

    @property
    def key(self) -> tuple[str, str, int, str]:
        """De-duplication key: (dataset, run, iteration, checkpoint): two checkpoints evaluated under
        the same run and iteration (a Megatron record beside its served export) are both kept."""
        return (self.dataset or "", self.run_name, self.iteration, self.checkpoint_name)

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
    """Sources of the records set aside: another record of the same (dataset, run,
    iteration, checkpoint) is later (see the module docstring)."""
    torn_lines: list[BadLine] = field(default_factory=list)
    """Last lines cut short by an interrupted writer (skipped, not bad)."""
    lines_read: int = 0

    def set_aside_line(self) -> str | None:
        """The one line saying how many records were set aside (None: none were)."""
        return f"set aside {len(self.duplicates)} {SET_ASIDE_TEXT}" if self.duplicates else None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_writer(w, source: str) -> None:
    if not isinstance(w, dict):
        raise RecordError(f"{source}: field 'writer' must be an object, got {type(w).__name__}")
    job = w.get("job_id")
    if job is not None and not isinstance(job, str):
        raise RecordError(f"{source}: field 'writer.job_id' must be a string or null, got {job!r}")
    restart = w.get("restart")
    if restart is not None and (not _is_int(restart) or restart < 0):
        raise RecordError(f"{source}: field 'writer.restart' must be an integer >= 0, got {restart!r}")


def parse_header(obj, source: str, *, has_state: bool = True) -> EvalRecord:
    """Validate every field but ``state`` (see :func:`parse_record`)."""
    if not isinstance(obj, dict):
        raise RecordError(f"{source}: a record must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in obj and not (f == "state" and has_state)]
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
    if obj.get("writer") is not None:
        _check_writer(obj["writer"], source)
    if obj.get("time") is not None:
        parse_time(obj["time"], source)
    return EvalRecord(
        iteration=it, metrics=obj["metrics"], checkpoint=obj.get("checkpoint"),
        run=obj.get("run"), dataset=obj.get("dataset"), time=obj.get("time"),
        consumed_samples=cs, config=cfg, writer=obj.get("writer"), source=source,
    )


def attach_state(rec: EvalRecord, state) -> EvalRecord:
    """Validate ``state`` (the record's ``state`` field) into ``rec.state``."""
    if not isinstance(state, dict):
        raise RecordError(f"{rec.source}: field 'state' must be an object (HESNRAccumulator.state_dict())")
    try:
        rec.state = parse_state(state)
    except (StateError, MemoryError) as exc:
        raise RecordError(f"{rec.source}: field 'state' is not a valid accumulator state: {exc}") from None
    _cross_check(rec)
    return rec


def parse_record(obj, source: str) -> EvalRecord:
    """Validate one decoded JSON value; raise :class:`RecordError` naming the field."""
    rec = parse_header(obj, source, has_state=False)
    return attach_state(rec, obj["state"])


def _cross_check(rec: EvalRecord) -> None:
    """Warn when the logged HE-SNR disagrees with the one the state gives."""
    logged = rec.metrics.get("hesnr")
    if not isinstance(logged, (int, float)) or isinstance(logged, bool):
        return
    again = rec.state.hesnr()
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
    """Is ``a`` the later evaluation of the same (dataset, run, iteration, checkpoint) than ``b``?

    A later requeue of the same Slurm job (``writer.restart``) wins; else the later
    ``time`` (as instants, whatever the offsets) when both have one and they differ;
    else the record read later."""
    wa, wb = a.writer or {}, b.writer or {}
    if (wa.get("job_id") is not None and wa.get("job_id") == wb.get("job_id")
            and _is_int(wa.get("restart")) and _is_int(wb.get("restart")) and wa["restart"] != wb["restart"]):
        return wa["restart"] > wb["restart"]
    if a.time is not None and b.time is not None:
        ta, tb = parse_time(a.time, a.source), parse_time(b.time, b.source)
        if ta != tb:
            return ta > tb
    return a.order > b.order


def check_regular(path, what: str) -> None:
    """Refuse what is not a regular file (a FIFO would block, a device never ends)
    with one line naming it; ``OSError`` also when it cannot be found."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise OSError(f"cannot open {what} file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        raise OSError(f"cannot open {what} file {path}: it is {kind}, not a regular file")


def open_regular(path, what: str):
    """Open a regular file for binary reading (see :func:`check_regular`)."""
    check_regular(path, what)
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise OSError(f"cannot open {what} file {path}: {exc.strerror or exc}") from None


def _lines(fh, max_line_bytes: int):
    """``(lineno, offset, raw, complete)``; ``raw`` is ``None`` for a line over the limit."""
    lineno = 0
    while True:
        offset = fh.tell()
        raw = fh.readline(max_line_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while True:  # skip the rest of that line without keeping it
                more = fh.readline(1 << 20)
                if not more or more.endswith(b"\n"):
                    break
            yield lineno, offset, None, True
            continue
        yield lineno, offset, raw, raw.endswith(b"\n")


def _decode(raw: bytes, source: str):
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond Python's digit limit
        raise RecordError(f"{source}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None


def _header_only(raw: bytes, source: str) -> EvalRecord:
    """The record's fields but ``state`` decoded and checked; where its state is kept."""
    spans = top_level_members(raw)
    if spans is None or "state" not in spans:
        rec = parse_header(_decode(raw, source), source, has_state=False)  # the error, or a record
        rec.state_span = None
        return rec
    try:
        obj = {k: json.loads(raw[lo:hi]) for k, (lo, hi) in spans.items() if k != "state"}
    except (ValueError, RecursionError):
        obj = _decode(raw, source)
        return parse_header(obj, source, has_state=False)
    rec = parse_header(obj, source, has_state=True)
    rec.state_span = spans["state"]
    return rec


def read_records(paths, *, strict: bool = False, select=None, max_line_bytes: int | None = None) -> ReadResult:
    """Read, validate and de-duplicate records from JSONL files.

    A (dataset, run, iteration, checkpoint) seen twice keeps the later record (see the module
    docstring) and lists the other in ``duplicates``.  Raises :class:`RecordError` on a
    bad line when ``strict``, and ``OSError`` naming the file when one cannot be
    opened or is not a regular file.

    ``select``: read only some records in full.  Called with every readable record's
    fields (``state`` not yet decoded, labels set); returns the records whose state
    is wanted.  Only those are validated (``hesnr compare`` reads two checkpoints of a
    long file this way).  ``max_line_bytes``: longest line read (default
    :data:`MAX_LINE_BYTES`); a longer one is a bad line.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    max_line_bytes = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    result = ReadResult()
    valid: list[EvalRecord] = []
    order = 0
    handles = []
    try:
        for path in paths:
            fh = open_regular(path, "records")
            handles.append(fh)
            path = Path(path)
            for lineno, offset, raw, complete in _lines(fh, max_line_bytes):
                source = f"{path}:{lineno}"
                if raw is not None and not raw.strip():
                    continue
                result.lines_read += 1
                order += 1
                try:
                    if raw is None:
                        raise RecordError(f"{source}: line longer than {max_line_bytes} bytes (the record limit)")
                    if select is None:
                        rec = parse_record(_decode(raw, source), source)
                    else:
                        rec = _header_only(raw, source)
                except RecordError as exc:
                    if not complete:
                        # The file's last line, cut short: a writer was interrupted mid-record.
                        result.torn_lines.append(BadLine(str(path), lineno, "last line cut short (no newline)"))
                        log.warning("skipping %s: the last line is cut short (no newline, not a whole record: "
                                    "an interrupted writer)", source)
                        continue
                    if strict:
                        raise
                    _bad(result, path, lineno, source, exc)
                    continue
                rec.order, rec.offset = order, offset
                rec.__dict__["_file"] = len(handles) - 1
                valid.append(rec)
        if select is not None:
            valid = _load_selected(valid, select, handles, result, strict)
    finally:
        for fh in handles:
            fh.close()
    by_key: dict[tuple, EvalRecord] = {}
    for rec in valid:
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
        log.warning("%s: %s", result.set_aside_line(), ", ".join(result.duplicates[:5]))
    return result


def _bad(result: ReadResult, path, lineno: int, source: str, exc: Exception) -> None:
    reason = str(exc)[len(source) + 2:] if str(exc).startswith(source) else str(exc)
    result.bad_lines.append(BadLine(str(path), lineno, reason))
    log.warning("skipping %s", exc)


def _load_selected(headers: list[EvalRecord], select, handles, result: ReadResult, strict: bool) -> list[EvalRecord]:
    """Decode and validate the state of the records ``select`` picks."""
    latest: dict[tuple, EvalRecord] = {}
    for rec in headers:
        old = latest.get(rec.key)
        if old is None or _newer(rec, old):
            latest[rec.key] = rec
    view = sorted(latest.values(), key=lambda r: (r.run_name, r.iteration, r.checkpoint_name))
    _set_labels(view)
    keys = {r.key for r in select(view)}
    chosen = []
    for rec in headers:
        if rec.key not in keys:
            continue
        fh = handles[rec.__dict__["_file"]]
        fh.seek(rec.offset)
        raw = fh.readline()
        try:
            if rec.state_span is None:
                attach_state(rec, _decode(raw, rec.source)["state"])
            else:
                lo, hi = rec.state_span
                attach_state(rec, _decode(raw[lo:hi], rec.source))
        except RecordError as exc:
            if strict:
                raise
            path, _, lineno = rec.source.rpartition(":")
            _bad(result, path, int(lineno), rec.source, exc)
            continue
        chosen.append(rec)
    return chosen


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
