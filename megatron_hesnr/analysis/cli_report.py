"""``hesnr report``: correlate evaluation records with downstream scores.

    hesnr report RECORDS.jsonl... [--scores scores.csv] [--output-dir DIR] [--strict]
                 [--category action] [--dataset NAME] [--bootstrap N] [--seed S]
                 [--score-label TEXT] [--no-figures]

Writes DIR/report.md, DIR/summary.json and the figures (PNG and SVG), all renamed into
place together at the end (a second report into DIR at the same time is refused);
prints a one-screen summary.  Exit status: 0 done, 2 bad input or an output directory that
cannot be written (one line on stderr naming the file, line, field or flag).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .cli_compare import seed_type

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", nargs="+", metavar="RECORDS.jsonl",
                        help="evaluation records (JSONL, one object per line), one or more files")
    parser.add_argument("--scores", metavar="CSV",
                        help="downstream scores: CSV with columns checkpoint,score (repeated rows are averaged)")
    parser.add_argument("--output-dir", default="hesnr_report", metavar="DIR",
                        help="where report.md, summary.json and the figures go (default: %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable line instead of skipping and counting it")
    parser.add_argument("--category", default="all",
                        help="mask category to analyse, e.g. action (default: all scored tokens)")
    parser.add_argument("--dataset", default=None,
                        help="use only records of this dataset (required when records mix datasets)")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="bootstrap resamples of the correlations' confidence intervals (0: none; default "
                             "%(default)s); the standard errors and the differs-from-previous column are closed form")
    parser.add_argument("--seed", type=seed_type, default=0, help="bootstrap seed, an integer >= 0 (default %(default)s)")
    parser.add_argument("--score-label", default=None, metavar="TEXT",
                        help="what the score is, for the figures' axes and the report, e.g. "
                             "'SWE-bench Verified resolved rate' (default: 'downstream score')")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")


LOCK_NAME = ".hesnr-report.lock"
JOURNAL_NAME = ".hesnr-report.commit"


def run(args) -> int:
    from ..atomic_write import FileSet, LockedError, PathLock, remove_orphans, roll_forward
    from .records import RecordError, read_records
    from .report import terminal_table, write_report
    from .scores import read_scores
    from .summary import AnalysisError, analyse

    def fail(message) -> int:
        print(f"hesnr report: {message}", file=sys.stderr)
        return 2

    if args.score_label is not None and not args.score_label.strip():
        return fail("--score-label: must not be empty")
    if args.bootstrap < 0:
        return fail(f"--bootstrap must be >= 0, got {args.bootstrap}")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        return fail(f"--output-dir {out_dir}: exists and is not a directory")
    try:
        read = read_records(args.records, strict=args.strict)
        scores = read_scores(args.scores, strict=args.strict) if args.scores else None
        summary = analyse(read, scores, category=args.category, dataset=args.dataset,
                          n_boot=args.bootstrap, seed=args.seed)
    except (RecordError, AnalysisError, OSError) as exc:
        return fail(exc)
    summary["score_label"] = args.score_label.strip() if args.score_label else None
    lock = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # One report writer per folder; its files (figures, report.md, summary.json last) are
        # renamed into place together at the end, so a reader never sees two runs mixed.
        lock = PathLock(out_dir / LOCK_NAME, f"--output-dir {out_dir}").acquire()
        roll_forward(str(out_dir / JOURNAL_NAME))
        with FileSet(out_dir / JOURNAL_NAME) as files:
            figures = []
            if not args.no_figures:
                from .figures import write_figures  # matplotlib: only when figures are drawn

                cat = None if summary["category"] == "all" else summary["category"]
                hists = {r.label: r.state.histogram(cat)
                         for r in read.records if (r.dataset or "") == (summary["dataset"] or "")}
                figures = write_figures(summary, hists, out_dir)
            paths = write_report(summary, figures, out_dir)
            written = [final for _, final in files.staged]
        remove_orphans(written)
    except LockedError as exc:
        return fail(str(exc))
    except (OSError, ValueError) as exc:
        return fail(f"--output-dir {out_dir}: cannot write ({getattr(exc, 'strerror', None) or exc}: "
                    f"{getattr(exc, 'filename', None) or out_dir})")
    finally:
        if lock is not None:
            lock.release()
    if read.set_aside_line():
        print(f"hesnr report: {read.set_aside_line()}", file=sys.stderr)
    print(terminal_table(summary))
    print(f"report: {paths['markdown']}  summary: {paths['json']}")
    return 0
