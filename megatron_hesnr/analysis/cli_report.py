"""``hesnr report``: correlate evaluation records with downstream scores.

    hesnr report RECORDS.jsonl... [--scores scores.csv] [--output-dir DIR] [--strict]
                 [--category action] [--dataset NAME] [--bootstrap N] [--seed S]

Writes DIR/report.md, DIR/summary.json and the figures (PNG and SVG); prints a
one-screen summary.  Exit status: 0 done, 2 bad input or an output directory that
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
                        help="bootstrap resamples for the confidence intervals (0: none; default %(default)s)")
    parser.add_argument("--seed", type=seed_type, default=0, help="bootstrap seed, an integer >= 0 (default %(default)s)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")


def run(args) -> int:
    from .figures import write_figures
    from .records import RecordError, read_records
    from .report import terminal_table, write_report
    from .scores import read_scores
    from .summary import AnalysisError, analyse

    def fail(message) -> int:
        print(f"hesnr report: {message}", file=sys.stderr)
        return 2

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
    try:
        figures = []
        if not args.no_figures:
            cat = None if summary["category"] == "all" else summary["category"]
            hists = {r.label: r.state.histogram(cat)
                     for r in read.records if (r.dataset or "") == (summary["dataset"] or "")}
            figures = write_figures(summary, hists, out_dir)
        paths = write_report(summary, figures, out_dir)
    except OSError as exc:
        return fail(f"--output-dir {out_dir}: cannot write ({exc.strerror or exc}: {exc.filename or out_dir})")
    if read.set_aside_line():
        print(f"hesnr report: {read.set_aside_line()}", file=sys.stderr)
    print(terminal_table(summary))
    print(f"report: {paths['markdown']}  summary: {paths['json']}")
    return 0
