"""One trajectory file -> token ids + masks, and the (optionally parallel) loop over files.

Every file is processed independently: a file that cannot be read becomes one
``FileResult`` with ``status="error"`` and a reason; the others go on.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import multiprocessing as mp
import os
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .filters import FilterConfig
from .readers import SUFFIXES, Limits, ReadError, file_parts, read_trajectories
from .row_select import RowSelect, choose
from .render import TEMPLATES, TOOL_STYLES, render
from .segments import Category
from .tokenize_mask import encode_and_mask

log = logging.getLogger(__name__)

CATEGORY_NAMES = {"action": Category.ACTION, "thought": Category.THOUGHT, "observation": Category.OBSERVATION}


@dataclass(frozen=True)
class PrepareConfig:
    template: str = "chatml"
    tool_style: str = "xml"
    filters: FilterConfig = field(default_factory=FilterConfig)
    categories: tuple = (Category.ACTION,)
    add_special_tokens: bool = True
    limits: Limits = field(default_factory=Limits)
    select: RowSelect | None = None
    #: Rows chosen by ``--limit`` / ``--sample`` (see :func:`plan_rows`); None: all rows.
    plan: RowPlan | None = None

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"--template: unknown template {self.template!r} (choose from {sorted(TEMPLATES)})")
        if self.tool_style not in TOOL_STYLES:
            raise ValueError(f"--tool-style: unknown style {self.tool_style!r} (choose from {TOOL_STYLES})")
        if Category.ACTION not in self.categories:
            raise ValueError("--categories must include 'action'")


@dataclass
class RowPlan:
    """Result of the candidate pass, per file: the row numbers to prepare (a file not in
    ``allowed`` could not be read and is read again, to report why), and the row errors
    found and rows dropped (both reported with the file's result)."""

    allowed: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)


def plan_rows(paths: list[str], cfg: PrepareConfig) -> RowPlan:
    """Read every file once, list the candidate rows (readable, passing the field
    filters) in input order, and choose among them (``--limit`` / ``--sample``)."""
    plan, candidates = RowPlan(), []
    select = cfg.select
    # Every file is read, also once --limit is reached: the manifest's counts of
    # dropped rows (and the error lines) cover all the inputs.
    for path, part in units_of(paths):
        try:
            read = read_trajectories(path, cfg.limits, select, part=part)
        except (ReadError, OSError, RecursionError, MemoryError):
            continue
        candidates.extend((path, n) for n in read.row_ids)
        plan.errors.setdefault(path, []).extend(read.errors)
        plan.dropped.setdefault(path, Counter()).update(read.dropped)
        plan.allowed[path] = frozenset()
    chosen, _ = choose(candidates, select)
    label = "limit" if select.limit is not None else "sample"
    by_path: dict = {}
    for path, n in chosen:
        by_path.setdefault(path, set()).add(n)
    for path, n in candidates:
        if n not in by_path.get(path, ()):
            plan.dropped[path][label] += 1
    for path in plan.allowed:
        plan.allowed[path] = frozenset(by_path.get(path, ()))
    return plan


@dataclass
class Doc:
    source: str
    ids: np.ndarray
    mask: np.ndarray
    num_actions: int
    actions_scored: int


@dataclass
class FileResult:
    path: str
    status: str                    # ok / partial (some JSONL lines failed) / error
    format: str = ""
    reason: str = ""               # why the file (status error) failed
    line_errors: list[str] = field(default_factory=list)
    docs: list[Doc] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)   # rows dropped here, per row filter


def load_tokenizer(path: str | os.PathLike):
    """HF ``tokenizers`` tokenizer from a ``tokenizer.json`` file or a folder holding one."""
    from tokenizers import Tokenizer

    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--tokenizer: {file} not found (give a tokenizer.json or its folder)")
    try:
        return Tokenizer.from_file(file)
    except Exception as exc:  # tokenizers raises a generic Exception on bad files
        raise ValueError(f"--tokenizer: {file} is not a HF tokenizers tokenizer.json ({exc})") from None


def tokenizer_info(path: str, tokenizer) -> dict:
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    with open(file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"path": os.path.abspath(file), "sha256": digest,
            "vocab_size": int(tokenizer.get_vocab_size(with_added_tokens=True))}


def _special_kind(path: str) -> str | None:
    """``None`` for a regular file (after symlinks), else what it is (a FIFO would block a read)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))
    return next((f"not a regular file ({name}), skipped" for test, name in kinds if test(mode)),
                "not a regular file, skipped")


def expand_inputs(inputs: list[str], with_duplicates: bool = False):
    """Files, folders (searched recursively for trajectory suffixes) and globs -> (files, problems).

    ``problems`` are ``"PATH: reason"`` lines: a missing path, a folder that cannot be
    listed, a FIFO / socket / device (never opened: reading one could block forever).
    A file reached under several names (relative and absolute paths, through its folder,
    a symbolic or hard link: the same device and inode) is kept once, under its first
    name in sorted order; ``with_duplicates``: also return how many names were dropped.
    """
    files, problems = [], []

    def unlistable(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")

    def keep(path: str) -> None:
        why = _special_kind(path)
        if why is None:
            files.append(path)
        else:
            problems.append(f"{path}: {why}")

    for item in inputs:
        if os.path.isdir(item):
            for root, _dirs, names in os.walk(item, onerror=unlistable):
                # Skip manifests of earlier `hesnr prepare` runs written into the same folder.
                for n in names:
                    if n.endswith(SUFFIXES) and not n.endswith("_manifest.json"):
                        keep(os.path.join(root, n))
        elif os.path.exists(item):
            keep(item)
        else:
            hits = [h for h in glob.glob(item, recursive=True) if not os.path.isdir(h)]
            for h in hits:
                keep(h)
            if not hits:
                problems.append(f"{item}: no such file, folder or glob match")
    seen, unique, duplicates = set(), [], 0
    for f in sorted(set(files)):
        try:
            st = os.stat(f)
            key = (st.st_dev, st.st_ino)
        except OSError:
            key = os.path.realpath(f)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        unique.append(f)
    duplicates += len(files) - len(set(files))
    return (unique, problems, duplicates) if with_duplicates else (unique, problems)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def effective_workers(requested: int, n_units: int) -> tuple[int, str]:
    """``--workers`` capped at the work units (files, parquet parts) and the usable CPUs;
    -> (workers, why it was capped or "")."""
    cpus = usable_cpus()
    workers = max(1, min(requested, n_units, cpus))
    if workers == requested:
        return workers, ""
    return workers, f"{n_units} input file(s)/part(s), {cpus} usable CPU(s)"


def _read_render(unit, cfg: PrepareConfig):
    """One unit ``(path, part)`` -> (FileResult without docs, rendered trajectories);
    status error on failure."""
    path, part = unit
    allowed = cfg.plan.allowed.get(path) if cfg.plan else None
    try:
        read = read_trajectories(path, cfg.limits, cfg.select, allowed, part)
    except ReadError as exc:
        return FileResult(path, "error", reason=str(exc)), []
    except OSError as exc:
        return FileResult(path, "error", reason=f"cannot open ({exc.strerror or exc})"), []
    except (RecursionError, MemoryError) as exc:
        return FileResult(path, "error", reason=f"input too deeply nested or too large ({type(exc).__name__})"), []
    first_part = part is None or part[2] == 1   # the candidate pass's errors go with it
    earlier = cfg.plan.errors.get(path, []) if cfg.plan and first_part else []
    dropped = read.dropped + (cfg.plan.dropped.get(path, Counter()) if cfg.plan and first_part else Counter())
    result = FileResult(path, "ok", read.format, line_errors=earlier + list(read.errors), dropped=dropped)
    try:
        rendered = [render(t, cfg.template, cfg.tool_style) for t in read.trajectories]
    except (RecursionError, MemoryError) as exc:
        return FileResult(path, "error", read.format, reason=f"too large or deeply nested to render ({type(exc).__name__})"), []
    return result, rendered


def _finish(result: FileResult, rendered, encoded) -> FileResult:
    for r, (ids, mask, scored) in zip(rendered, encoded):
        if len(ids) == 0:
            result.line_errors.append(f"{r.source}: renders to no tokens")
            continue
        result.docs.append(Doc(r.source, ids, mask, r.num_actions, scored))
    if not result.docs and (result.dropped or not result.line_errors):
        # Rows were dropped by the row filters (the bad ones, if any, are still reported).
        result.status, result.reason = "filtered", "no row selected by the row filters"
        return result
    if not result.docs:
        reasons = "; ".join(result.line_errors[:3]) or "no trajectory"
        return FileResult(result.path, "error", result.format, reason=f"nothing usable ({reasons})",
                          line_errors=result.line_errors, dropped=result.dropped)
    if result.line_errors:
        result.status = "partial"
    return result


def _stage(units: list, cfg: PrepareConfig):
    return [_read_render(u, cfg) for u in units]


def units_of(paths: list[str]) -> list:
    """Work units: ``(path, part)``; a large parquet file is several parts."""
    return [(p, part) for p in paths for part in file_parts(p)]


def _merge(parts: list[FileResult]) -> FileResult:
    """The results of one file's parts -> the file's result."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    out = FileResult(first.path, "ok", next((r.format for r in parts if r.format), ""))
    for r in parts:
        out.docs.extend(r.docs)
        out.line_errors.extend(r.line_errors)
        out.dropped.update(r.dropped)
    failed = [r for r in parts if r.status == "error"]
    if not out.docs and len(failed) == len(parts):
        return FileResult(first.path, "error", out.format, reason=failed[0].reason, line_errors=out.line_errors,
                          dropped=out.dropped)
    out.line_errors.extend(f"part {i + 1}/{len(parts)}: {r.reason}" for i, r in enumerate(parts)
                           if r.status == "error" and r.reason and not r.reason.startswith("nothing usable"))
    if out.docs:
        out.status = "partial" if out.line_errors else "ok"
    elif out.line_errors and not out.dropped:
        out.status, out.reason = "error", "nothing usable (" + "; ".join(out.line_errors[:3]) + ")"
    else:
        out.status, out.reason = "filtered", "no row selected by the row filters"
    return out


def _by_file(results):
    """Consecutive unit results of the same path -> one result per file, in order."""
    pending: list[FileResult] = []
    for r in results:
        if pending and r.path != pending[0].path:
            yield _merge(pending)
            pending = []
        pending.append(r)
    if pending:
        yield _merge(pending)


def _complete(staged, tokenizer, cfg: PrepareConfig) -> list[FileResult]:
    flat = [r for result, rendered in staged if result.status != "error" for r in rendered]
    encoded = iter(encode_and_mask(tokenizer, flat, cfg.filters, cfg.categories, cfg.add_special_tokens))
    out = []
    for result, rendered in staged:
        if result.status == "error":
            out.append(result)
        else:
            out.append(_finish(result, rendered, [next(encoded) for _ in rendered]))
    return out


def process_files(paths: list[str], tokenizer, cfg: PrepareConfig) -> list[FileResult]:
    """Read and render every file, tokenize all their texts in one ``encode_batch`` call
    (the tokenizer's thread pool then has enough work), then build the masks."""
    return list(_by_file(_complete(_stage(units_of(paths), cfg), tokenizer, cfg)))


# ------------------------------------------------------------------ parallel

_WORKER: dict = {}


def _init_worker(tokenizer_path: str, cfg: PrepareConfig) -> None:
    # One process per core already: the tokenizer's own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tokenizer"] = load_tokenizer(tokenizer_path)
    _WORKER["cfg"] = cfg


def _work(units: list) -> list[FileResult]:
    return _complete(_stage(units, _WORKER["cfg"]), _WORKER["tokenizer"], _WORKER["cfg"])


def _batches(paths: list[str], size: int):
    for i in range(0, len(paths), size):
        yield paths[i:i + size]


def iter_results(paths: list[str], tokenizer_path: str, cfg: PrepareConfig, workers: int = 1, tokenizer=None,
                 batch_files: int = 16):
    """Yield one :class:`FileResult` per path, in input order.

    Work is split in units (a file, or a part of a large parquet file). ``workers <= 1``:
    in this process, ``batch_files`` units per ``encode_batch`` call (the tokenizer uses
    its own threads). ``workers > 1``: that many processes, each given batches of units
    and tokenizing single-threaded.
    """
    yield from _by_file(_iter_units(units_of(paths), tokenizer_path, cfg, workers, tokenizer, batch_files))


def _iter_units(units: list, tokenizer_path: str, cfg: PrepareConfig, workers: int, tokenizer, batch_files: int):
    workers = effective_workers(workers, len(units))[0]
    if workers <= 1 or len(units) <= 1:
        tok = tokenizer or load_tokenizer(tokenizer_path)
        # encode_batch releases the GIL: tokenize batch k in a thread while this thread
        # reads and renders batch k+1 (and the caller writes the results of batch k-1).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for batch in _batches(units, batch_files):
                staged = _stage(batch, cfg)
                nxt = pool.submit(_complete, staged, tok, cfg)
                if pending is not None:
                    yield from pending.result()
                pending = nxt
            if pending is not None:
                yield from pending.result()
        return
    # Small batches keep all workers busy and the progress bar moving.
    size = max(1, min(batch_files, len(units) // (4 * workers)))
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path, cfg)) as pool:
        for results in pool.imap(_work, list(_batches(units, size))):
            yield from results
