"""How `hesnr report` and `hesnr compare` scale with checkpoints x trajectories.

For each cell of the grid it writes a JSONL of records (one set, per-trajectory sums
of ``T`` trajectories, ``C`` checkpoints), then measures in one run:

* ``json.loads``: reading the file and decoding every line (nothing kept): the floor;
* ``report``: ``hesnr report FILE --no-figures`` in a fresh process (start-up included);
* ``compare``: ``hesnr compare FILE --a <first> --b <second>`` in a fresh process;
* peak memory (ru_maxrss) of each command, against the file size, and its CPU time.

Targets (issue 24): report at 40 x 20K within 3x json.loads; compare under 2 s; peak
memory under 2x the file size; ``hesnr --help`` < 0.5 s, ``hesnr report --help`` < 1 s.

    python benchmarks/bench_report.py --quick     # 3 cells incl. 40 x 20K, under a minute on 2 cores
    python benchmarks/bench_report.py             # 10/40/100 x 1K/20K/100K (about 10 minutes quiet, 1.1 GB of /tmp)
    python benchmarks/bench_report.py --small-records 100000   # many small records (memory per record)

Each time is the fastest of ``--repeat`` runs (default 2, 1 with ``--quick``); peak memory the largest.

The records come from a generator here (numpy, no torch, not the tests' helpers):
valid accumulator states (the reader's rules hold) with 4 distinct per-trajectory
tables cycled over the checkpoints, so compare pairs two different tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_hesnr.metric.state_layout import BIN_FIELDS, SCALAR_FIELDS  # noqa: E402  (torch-free)

K, THRESHOLD, NUM_BINS = 10, (math.log(3) + math.log(4)) / 2, 512
CATEGORIES = ["action", "thought", "observation"]
VARIANTS = 4
MEASURE = (
    "import json, resource, sys; from megatron_hesnr.cli import main; rc = main(sys.argv[1:]); "
    "sys.stdout.flush(); u = resource.getrusage(resource.RUSAGE_SELF); print('@@' + json.dumps({'rc': rc, "
    "'maxrss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime}), file=sys.stderr)"
)


def synth_state(n: int, rng: np.random.Generator, num_bins: int = NUM_BINS, categories=CATEGORIES) -> dict:
    """A valid ``HESNRAccumulator.state_dict()`` with ``n`` trajectories, one category with tokens."""
    f = {name: i for i, name in enumerate(SCALAR_FIELDS)}
    rows = np.zeros((n, len(SCALAR_FIELDS)))
    tokens = rng.integers(5, 40, n).astype(float)
    in_topk = np.floor(tokens * rng.uniform(0.7, 1.0, n))
    top1 = np.floor(in_topk * rng.uniform(0.3, 0.7, n))
    he = np.floor(in_topk * rng.uniform(0.1, 0.5, n))
    rows[:, f["num_tokens"]] = tokens
    rows[:, f["num_in_topk"]] = in_topk
    rows[:, f["num_top1"]] = top1
    rows[:, f["num_high_entropy"]] = he
    rows[:, f["sum_nll"]] = tokens * rng.uniform(0.5, 2.0, n)
    rows[:, f["sum_entropy"]] = tokens * rng.uniform(0.2, 1.5, n)
    rows[:, f["sum_p_over_h"]] = he * rng.uniform(0.05, 0.5, n)
    rows[:, f["sum_q_over_h"]] = he * rng.uniform(0.1, 0.7, n)
    rows[:, f["sum_nll_he"]] = he * rng.uniform(0.5, 3.0, n)
    total = rows.sum(0)
    scalars = np.zeros((len(categories), len(SCALAR_FIELDS)))
    scalars[0] = total
    hist = np.zeros((len(categories), num_bins, len(BIN_FIELDS)))
    b = {name: i for i, name in enumerate(BIN_FIELDS)}
    hist[0, num_bins // 5, b["count"]] = total[f["num_tokens"]]
    hist[0, num_bins // 5, b["count_in_topk"]] = total[f["num_in_topk"]]
    cols = {}
    for name, j in f.items():
        col = rows[:, j]
        cols[name] = [int(v) for v in col.tolist()] if name.startswith("num_") else col.tolist()
    return {"version": 1, "config": {"k": K, "threshold": THRESHOLD, "num_bins": num_bins,
                                     "category_names": list(categories), "num_documents": n},
            "scalar_fields": list(SCALAR_FIELDS), "bin_fields": list(BIN_FIELDS),
            "scalars": scalars.tolist(), "hist": hist.tolist(), "reduced": True,
            "trajectories": {"fields": list(SCALAR_FIELDS), "num_documents": n,
                             "by_category": {"action": cols}}}


def write_records(path: Path, checkpoints: int, n: int, small: bool = False) -> None:
    """``small``: records of about 1.5 KB (2 trajectories, one category, 4 bins), as many as checkpoints."""
    rng = np.random.default_rng(n)
    kw = {"num_bins": 4, "categories": ["action"]} if small else {}
    states = [json.dumps(synth_state(n, rng, **kw)) for _ in range(VARIANTS)]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(checkpoints):
            it = (i + 1) * 1000
            head = json.dumps({"iteration": it, "consumed_samples": it * 64, "run": "bench",
                               "checkpoint": f"/ckpt/bench/iter_{it:07d}", "dataset": "swe-bench-like",
                               "time": f"2026-12-01T{i // 60 % 24:02d}:{i % 60:02d}:00Z", "metrics": {}})
            fh.write(head[:-1] + ', "state": ' + states[i % VARIANTS] + "}\n")


def json_loads_seconds(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
    return time.perf_counter() - t


def run_cli(args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of ``hesnr ARGS`` in a fresh process
    (CPU time says what the command costs when a loaded machine stretches the wall time)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    tail = [ln for ln in proc.stderr.splitlines() if ln.startswith("@@")]
    if proc.returncode != 0 or not tail:
        raise SystemExit(f"hesnr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    info = json.loads(tail[-1][2:])
    return wall, info["maxrss_kb"] / 1024, info["cpu_s"]


def help_seconds(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "megatron_hesnr.cli", *args], capture_output=True, env=env, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 cells (10x1K, 10x20K, 40x20K): under a minute")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[10, 40, 100])
    ap.add_argument("--trajectories", type=int, nargs="+", default=[1000, 20000, 100000])
    ap.add_argument("--bootstrap", type=int, default=2000, help="compare's paired resamples (default 2000)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of each measurement; the fastest counts (a loaded machine is noisy; "
                         "default 1 with --quick, else 2)")
    ap.add_argument("--small-records", type=int, nargs="+", default=None, metavar="N",
                    help="instead of the grid: files of N small records (about 1.5 KB each: one checkpoint "
                         "per record, 2 trajectories, 4 bins), e.g. 100000 300000")
    ap.add_argument("--workdir", default=None, help="where the JSONL files go (default: a temporary folder)")
    args = ap.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 2)
    cells = ([(10, 1000), (10, 20000), (40, 20000)] if args.quick
             else [(c, t) for t in args.trajectories for c in args.checkpoints])
    if args.small_records:
        cells = [(c, 2) for c in args.small_records]
    h_top, h_report = help_seconds(["--help"]), help_seconds(["report", "--help"])
    print(f"hesnr --help {h_top:.2f} s (target < 0.5), hesnr report --help {h_report:.2f} s (target < 1)")
    head = (f"{'ckpts':>5} {'traj':>7} {'file MB':>8} {'json.loads s':>12} {'report s':>9} {'(cpu)':>6} {'x loads':>8} "
            f"{'report MB':>9} {'x file':>7} {'compare s':>9} {'(cpu)':>6} {'compare MB':>10} {'x file':>7}")
    print(head)
    print("-" * len(head))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for checkpoints, n in cells:
            path = Path(tmp) / f"records_{checkpoints}x{n}.jsonl"
            write_records(path, checkpoints, n, small=bool(args.small_records))
            size_mb = path.stat().st_size / 2 ** 20
            loads = min(json_loads_seconds(path) for _ in range(args.repeat))
            rep = [run_cli(["report", str(path), "--no-figures", "--output-dir", str(Path(tmp) / "rep")])
                   for _ in range(args.repeat)]
            cmp = [run_cli(["compare", str(path), "--a", "1000", "--b", "2000", "--bootstrap", str(args.bootstrap)])
                   for _ in range(args.repeat)]
            rep_s, rep_mb, rep_cpu = min(r[0] for r in rep), max(r[1] for r in rep), min(r[2] for r in rep)
            cmp_s, cmp_mb, cmp_cpu = min(r[0] for r in cmp), max(r[1] for r in cmp), min(r[2] for r in cmp)
            row = dict(checkpoints=checkpoints, trajectories=n, file_mb=size_mb, loads_s=loads, report_s=rep_s,
                       report_mb=rep_mb, compare_s=cmp_s, compare_mb=cmp_mb)
            rows.append(row)
            print(f"{checkpoints:>5} {n:>7} {size_mb:>8.1f} {loads:>12.2f} {rep_s:>9.2f} {rep_cpu:>6.2f} "
                  f"{rep_s / loads:>8.2f} {rep_mb:>9.0f} {rep_mb / size_mb:>7.2f} {cmp_s:>9.2f} {cmp_cpu:>6.2f} "
                  f"{cmp_mb:>10.0f} {cmp_mb / size_mb:>7.2f}", flush=True)
            path.unlink()
    target = [r for r in rows if (r["checkpoints"], r["trajectories"]) == (40, 20000)]
    if target:
        r = target[0]
        print(f"targets at 40 x 20K: report {r['report_s'] / r['loads_s']:.2f}x json.loads (< 3), compare "
              f"{r['compare_s']:.2f} s (< 2), peak memory report {r['report_mb'] / r['file_mb']:.2f}x / compare "
              f"{r['compare_mb'] / r['file_mb']:.2f}x the file (< 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
