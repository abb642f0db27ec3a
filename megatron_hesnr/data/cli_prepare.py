"""``hesnr prepare``: trajectory files -> ``P_tokens``/``P_mask`` Megatron dataset + manifest.

Exit status: 0 when at least one trajectory was written (and, with ``--strict``, no
file or line failed); 1 otherwise; 2 for bad arguments, an output prefix that cannot be
written or that another ``hesnr prepare`` is writing (one line naming the flag and path,
and the other writer's pid, host and start time). The files are written under temporary
names and renamed into place together at the end, the manifest last
(:mod:`megatron_hesnr.data.writer`): an interrupted run leaves an earlier dataset as it was. Every failed file (or JSONL
line), unlistable folder or special file (FIFO, socket, device: never opened) gets one
``error:`` line on stderr naming it and the reason.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import replace

import numpy as np

from .filters import FILTER_NAMES, FilterConfig
from .readers import Limits
from .render import TEMPLATES, TOOL_STYLES
from .row_select import RowSelect, parse_where
from .segments import Category

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="trajectory files, folders (searched for .traj/.traj.json/.jsonl/.json/.parquet) or globs")
    p.add_argument("--tokenizer", required=True, help="HF tokenizers tokenizer.json (or the folder holding it)")
    p.add_argument("--output-prefix", required=True, metavar="P",
                   help="writes P_tokens.bin/.idx, P_mask.bin/.idx and P_manifest.json")
    p.add_argument("--template", default="chatml", choices=sorted(TEMPLATES), help="text layout (default chatml)")
    p.add_argument("--tool-style", default="xml", choices=TOOL_STYLES,
                   help="how structured tool calls are written: XML function tags or JSON (default xml)")
    for name in FILTER_NAMES:
        p.add_argument(f"--no-{name}", dest=f"no_{name}", action="store_true",
                       help=f"score {name} inside actions (switch the {name} filter off)")
    p.add_argument("--categories", default="action",
                   help="comma list of mask categories: action (1, always), thought (2), observation (3)")
    p.add_argument("--no-special-tokens", action="store_true",
                   help="do not let the tokenizer add its special tokens (e.g. BOS)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes (default 1: in-process, tokenizer threads); capped at the number of input "
                        "files (parquet parts) and of usable CPUs")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file or line fails")
    p.add_argument("--max-file-bytes", type=int, default=Limits.max_file_bytes, metavar="N",
                   help="refuse a single-document file (.traj, .json) larger than N bytes, reported as an error "
                        "line (default %(default)s)")
    p.add_argument("--max-line-bytes", type=int, default=Limits.max_line_bytes, metavar="N",
                   help="refuse a JSONL line longer than N bytes, reported as an error line; the other lines "
                        "are read (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    rows = p.add_argument_group("row filters (a row is one trajectory; the manifest records what each dropped)")
    rows.add_argument("--only-resolved", action="store_true",
                      help="keep rows whose 'resolved' (or 'target') field is true or 1; null (outcome unknown) counts as "
                           "not resolved; a row without either field is an error")
    rows.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                      help="keep rows whose top-level field KEY equals VALUE (repeatable: all must match)")
    pick = rows.add_mutually_exclusive_group()
    pick.add_argument("--limit", type=int, default=None, metavar="N", help="the first N rows (after the filters above)")
    pick.add_argument("--sample", type=int, default=None, metavar="N",
                      help="N rows drawn at random (after the filters above), reproducible with --seed")
    rows.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")


def config_from_args(args) -> "PrepareConfig":
    from .pipeline import CATEGORY_NAMES, PrepareConfig

    cats = []
    for name in (c.strip() for c in args.categories.split(",") if c.strip()):
        if name not in CATEGORY_NAMES:
            raise ValueError(f"--categories: unknown category {name!r} (choose from {sorted(CATEGORY_NAMES)})")
        cats.append(CATEGORY_NAMES[name])
    if Category.ACTION not in cats:
        cats.insert(0, Category.ACTION)
    for flag in ("max_file_bytes", "max_line_bytes"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number of bytes, got {getattr(args, flag)}")
    filters = FilterConfig(**{n: not getattr(args, f"no_{n}") for n in FILTER_NAMES})
    select = RowSelect(args.only_resolved, parse_where(args.where), args.limit, args.sample, args.seed)
    return PrepareConfig(template=args.template, tool_style=args.tool_style, filters=filters,
                         categories=tuple(sorted(set(cats))), add_special_tokens=not args.no_special_tokens,
                         limits=Limits(args.max_file_bytes, args.max_line_bytes),
                         select=select if select.active else None)


def _counts(mask: np.ndarray) -> np.ndarray:
    return np.bincount(mask, minlength=4)[:4].astype(np.int64)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    from ..atomic_write import LockedError
    from .indexed import prefix_lock, recover_prefix
    from .pipeline import (effective_workers, expand_inputs, iter_results, load_tokenizer, plan_rows,
                           tokenizer_info, units_of)

    lock = None
    try:
        cfg = config_from_args(args)
        if args.workers < 1:
            raise ValueError("--workers must be >= 1")
        check_output_prefix(args.output_prefix)
        # Before any work: a second run into the same prefix is refused at once.
        os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
        lock = prefix_lock(args.output_prefix).acquire()
        # A commit a killed run left half done is finished now (readers need not wait for this run).
        recover_prefix(args.output_prefix, locked=True)
        tokenizer = load_tokenizer(args.tokenizer)
    except (ValueError, FileNotFoundError, LockedError) as exc:
        if lock is not None:
            lock.release()
        print(f"hesnr prepare: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hesnr prepare: --output-prefix {args.output_prefix}: cannot write "
              f"{exc.filename or args.output_prefix} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    try:
        paths, missing, duplicates = expand_inputs(args.inputs, with_duplicates=True)
        for m in missing:
            print(f"hesnr prepare: error: {m}", file=sys.stderr)
        if duplicates:
            print(f"hesnr prepare: note: {duplicates} input(s) named a file already given under another "
                  "path (relative, absolute, its folder or a link); each file is prepared once", file=sys.stderr)
        workers = args.workers
        if workers > 1:
            workers, why = effective_workers(workers, len(units_of(paths)))
            if why:
                print(f"hesnr prepare: note: --workers {args.workers} capped at {workers} ({why})", file=sys.stderr)
        tok_info = tokenizer_info(args.tokenizer, tokenizer)
        if cfg.select is not None and cfg.select.needs_candidates:
            cfg = replace(cfg, plan=plan_rows(paths, cfg))
        n_err = len(missing)
        t0 = time.perf_counter()
        results = iter_results(paths, args.tokenizer, cfg, workers, tokenizer=tokenizer)
        if not args.no_progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(paths), unit="file", desc="hesnr prepare", file=sys.stderr)
        try:
            return _write(args, cfg, tok_info, paths, results, n_err, t0, lock)
        except OSError as exc:
            print(f"hesnr prepare: --output-prefix {args.output_prefix}: cannot write "
                  f"{exc.filename or args.output_prefix} ({exc.strerror or exc})", file=sys.stderr)
            return 2
    finally:
        lock.release()


def check_output_prefix(prefix: str) -> None:
    """Refuse, before any work, a prefix whose folder cannot be created or written."""
    if not prefix or not prefix.strip():
        raise ValueError("--output-prefix must not be empty (give e.g. data/swe_eval)")
    if prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise ValueError(f"--output-prefix {prefix}: is a folder; give a file name stem inside it "
                         f"(e.g. {os.path.join(prefix, 'swe_eval')})")
    folder = os.path.dirname(os.path.abspath(prefix))
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--output-prefix {prefix}: cannot create folder {folder} ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output-prefix {prefix}: folder {probe} is not writable")


def _write(args, cfg, tok_info, paths, results, n_err, t0, lock) -> int:
    writers: list = []
    try:
        return _write_into(args, cfg, tok_info, paths, results, n_err, t0, lock, writers)
    except BaseException:
        for w in writers:   # interrupted or failed: the temporary files go, an earlier dataset stays
            w.abort()
        raise


def _write_into(args, cfg, tok_info, paths, results, n_err, t0, lock, writers: list) -> int:
    from .. import __version__
    from .writer import DatasetWriter

    writer = None
    dropped = Counter()
    inputs, documents = [], []
    by_format: dict[str, np.ndarray] = {}
    totals = np.zeros(4, dtype=np.int64)
    for res in results:
        if res.status == "error":
            n_err += 1
            print(f"hesnr prepare: error: {res.path}: {res.reason}", file=sys.stderr)
        for e in res.line_errors:
            n_err += 1
            print(f"hesnr prepare: error: {res.path}: {e}", file=sys.stderr)
        dropped.update(res.dropped)
        file_counts = np.zeros(4, dtype=np.int64)
        for d in res.docs:
            if writer is None:
                writer = DatasetWriter(args.output_prefix, tok_info["vocab_size"], lock=lock)
                writers.append(writer)
            writer.add(d.ids, d.mask)
            c = _counts(d.mask)
            file_counts += c
            documents.append({"source": d.source, "tokens": int(len(d.ids)), "action_tokens": int(c[1]),
                              "num_actions": d.num_actions, "actions_scored": d.actions_scored})
        totals += file_counts
        fmt = res.format or "unreadable"
        row = by_format.setdefault(fmt, np.zeros(9, dtype=np.int64))
        row += [1, res.status != "error", len(res.docs), file_counts.sum(), *file_counts[1:],
                sum(d.num_actions for d in res.docs), sum(d.actions_scored for d in res.docs)]
        inputs.append({"path": os.path.abspath(res.path), "status": res.status, "format": res.format,
                       "reason": res.reason, "line_errors": res.line_errors, "documents": len(res.docs),
                       "rows_dropped": dict(res.dropped),
                       "tokens": int(file_counts.sum()),
                       "counts": {c.name.lower(): int(file_counts[int(c)]) for c in Category}})
    elapsed = time.perf_counter() - t0
    row_filters = None
    if cfg.select is not None:
        row_filters = {**cfg.select.as_dict(), "dropped": {k: int(dropped[k]) for k in cfg.select.labels()}}
        print("row filters: " + ", ".join(f"{k} dropped {v}" for k, v in row_filters["dropped"].items()),
              file=sys.stderr)
    if writer is None:
        print(f"hesnr prepare: no trajectory could be prepared from {len(paths)} file(s); nothing written",
              file=sys.stderr)
        return 1
    manifest = writer.finalize({
        "created_by": f"megatron-hesnr {__version__}",
        "tokenizer": tok_info,
        "template": cfg.template,
        "tool_style": cfg.tool_style,
        "filters": cfg.filters.as_dict(),
        "categories": [Category(c).name.lower() for c in cfg.categories],
        "add_special_tokens": cfg.add_special_tokens,
        "row_filters": row_filters,
        "mask_values": {c.name.lower(): int(c) for c in Category},
        "counts": {c.name.lower(): int(totals[int(c)]) for c in Category},
        "inputs": inputs,
        "documents": documents,
    })
    rows = [["format", "files", "ok", "trajectories", "tokens", "action", "thought", "observation",
             "actions", "actions scored"]]
    for fmt, r in sorted(by_format.items()):
        rows.append([fmt] + [str(int(v)) for v in r])
    all_r = sum(by_format.values())
    rows.append(["total"] + [str(int(v)) for v in all_r])
    print(_table(rows))
    print(f"wrote {manifest['num_documents']} documents, {manifest['num_tokens']} tokens "
          f"({int(totals[1])} scored as action) to {args.output_prefix}_{{tokens,mask}}.{{bin,idx}} "
          f"in {elapsed:.1f}s; {n_err} error(s)")
    if args.strict and n_err:
        print(f"hesnr prepare: --strict: {n_err} error(s)", file=sys.stderr)
        return 1
    return 0
