"""``hesnr compare``: is checkpoint B different from checkpoint A on the same trajectories?

    hesnr compare RECORDS.jsonl... --a CKPT --b CKPT [--dataset NAME] [--category NAME]
                  [--json PATH] [--bootstrap N] [--seed S]

For each metric: a, b, diff = b - a, a 95% interval and a two-sided p from a paired
bootstrap over the trajectories both records share.  Exit status: 0 done, 2 the
records cannot be compared (one ``error:`` line says why).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from ..metric.stderr import ALPHA, DEFAULT_BOOTSTRAP


def seed_type(text: str) -> int:
    """``--seed``: an integer >= 0 (numpy's generators take no negative seed), checked at parse time."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", nargs="+", metavar="RECORDS.jsonl", help="evaluation records (JSONL), one or more files")
    parser.add_argument("--a", required=True, metavar="CKPT",
                        help="baseline checkpoint: its path, last path component, report label (run/iter_...) "
                             "or iteration")
    parser.add_argument("--b", required=True, metavar="CKPT", help="the checkpoint compared with --a (diff = b - a)")
    parser.add_argument("--dataset", default=None, help="use only records of this dataset")
    parser.add_argument("--category", default="all", help="mask category, e.g. action (default: all scored tokens)")
    parser.add_argument("--json", metavar="PATH", help='write {"<metric>": {"a", "b", "diff", "ci", "p"}, ...} here')
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help="paired resamples of the trajectories (default %(default)s)")
    parser.add_argument("--seed", type=seed_type, default=0, help="resampling seed, an integer >= 0 (default %(default)s)")


def _fmt(v, spec="+.4g") -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_result(res: dict) -> str:
    t = res["trajectories"]
    head = (f"hesnr compare: b = {res['b']} vs a = {res['a']}; dataset {res['dataset']!r}, category {res['category']}; "
            f"{t['shared']} shared trajectories, {res['n_boot']} paired resamples (seed {res['seed']})")
    if t["only_a"] or t["only_b"]:
        head += f"; left out: {t['only_a']} scored only in a, {t['only_b']} only in b"
    cols = f"{'metric':<22}{'a':>12}{'b':>12}{'diff (b-a)':>13}  {'95% CI':<24}{'p':>8}"
    lines = [head, cols, "-" * len(cols)]
    for m, e in res["metrics"].items():
        ci = f"[{_fmt(e['ci'][0])}, {_fmt(e['ci'][1])}]"
        star = " *" if isinstance(e["p"], float) and e["p"] < ALPHA else ""
        lines.append(f"{m:<22}{_fmt(e['a'], '.5g'):>12}{_fmt(e['b'], '.5g'):>12}{_fmt(e['diff']):>13}  {ci:<24}"
                     f"{_fmt(e['p'], '.3g'):>8}{star}")
    lines.append(f"* p < {ALPHA}: b differs from a beyond the trajectory sampling noise")
    return "\n".join(lines)


def run(args) -> int:
    from ..atomic_write import write_text
    from .compare import CompareError, compare_records, find_record
    from .records import RecordError, read_records
    from .summary import AnalysisError, select_dataset, jsonable

    def fail(msg: str) -> int:
        print(f"hesnr compare: error: {msg}", file=sys.stderr)
        return 2

    if args.bootstrap < 1:
        return fail(f"--bootstrap must be >= 1, got {args.bootstrap}")
    def wanted(view):
        records = select_dataset(view, args.dataset) if args.dataset else view
        return [find_record(records, args.a, "--a"), find_record(records, args.b, "--b")]

    try:
        # Only the two checkpoints' states are decoded and validated; the other lines'
        # small fields are read to find them and to set aside re-evaluated iterations.
        read = read_records(args.records, select=wanted)
        if not read.records:
            return fail("no usable evaluation record in " + ", ".join(args.records))
        records = select_dataset(read.records, args.dataset) if args.dataset else read.records
        a = find_record(records, args.a, "--a")
        b = find_record(records, args.b, "--b")
        res = compare_records(a, b, category=args.category, n_boot=args.bootstrap, seed=args.seed)
    except (CompareError, RecordError, AnalysisError, OSError) as exc:
        return fail(str(exc))
    if read.set_aside_line():
        print(f"hesnr compare: {read.set_aside_line()}", file=sys.stderr)
    print(format_result(res))
    if args.json:
        out = {m: {k: e[k] for k in ("a", "b", "diff", "ci", "p")} for m, e in res["metrics"].items()}
        if read.duplicates:  # only then: a file without re-evaluations keeps exactly the metric keys
            out["set_aside"] = len(read.duplicates)
        try:   # temporary file renamed over PATH: a reader sees the old file or the new one, whole
            write_text(args.json, json.dumps(jsonable(out), indent=1, allow_nan=False) + "\n")
        except OSError as exc:
            return fail(f"--json {args.json}: {exc.strerror or exc}")
    return 0
