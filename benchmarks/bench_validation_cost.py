#!/usr/bin/env python
"""What the rank-agreement and input checks cost on the happy path, next to ``token_stats``.

Measured in one run, on CPU:

* ``token_stats`` on ``--tokens x --vocab`` bf16 logits (the reference path, TP=1);
* per ``token_stats`` call under TP: the two label checksums of the header and the
  header all-gather (``HEADER_SIZE`` int64 per rank) over a 2-rank gloo group;
* per ``HESNRAccumulator.update``: the ``k`` / ``H_k <= ln k`` check;
* per ``all_reduce`` (once per evaluation, not per call): the fingerprint all-gather.

It prints the bytes each extra collective sends, times per call, and the per-call
checks as a percentage of the ``token_stats`` call (the target is below 1%).

    python benchmarks/bench_validation_cost.py              # 8192 x 151936 (2.5 GB of bf16 logits)
    python benchmarks/bench_validation_cost.py --quick     # that it runs: 256 x 32000, 20 iterations
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import megatron_hesnr as mh  # noqa: E402
from megatron_hesnr.metric.state_check import FINGERPRINT_FIELDS, fingerprint  # noqa: E402
from megatron_hesnr.metric.tp_merge import HEADER_FIELDS, HEADER_SIZE, _header, labels_checksums  # noqa: E402


def _median_time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gloo_rank(rank: int, init: str, iters: int, tokens: int, queue) -> None:
    import torch.distributed as dist

    from megatron_hesnr.metric.rank_agreement import agree_or_raise

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    labels = torch.randint(0, 151936, (tokens,), generator=torch.Generator().manual_seed(0))
    header = _header(tokens, mh.DEFAULT_K, torch.float32, 75968, 151936, labels)
    acc = mh.HESNRAccumulator()
    fp = fingerprint(acc)
    group = dist.group.WORLD
    for _ in range(10):  # warm-up: connections, allocator
        agree_or_raise(header, HEADER_FIELDS, group, "cpu", "tp", "")
    dist.barrier()
    t_header = _median_time(lambda: agree_or_raise(header, HEADER_FIELDS, group, "cpu", "tp", ""), iters)
    dist.barrier()
    t_fp = _median_time(lambda: agree_or_raise(fp, FINGERPRINT_FIELDS, group, "cpu", "dp", ""), iters)
    dist.barrier()
    # For scale: the all-reduce of the accumulator state itself.
    t_state = _median_time(lambda: dist.all_reduce(acc.state.clone(), group=group), iters)
    if rank == 0:
        queue.put({"header_gather_s": t_header, "fingerprint_gather_s": t_fp, "state_all_reduce_s": t_state,
                   "state_bytes": acc.state.numel() * 8})
    dist.barrier()
    dist.destroy_process_group()


def gloo_times(iters: int, tokens: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        init = os.path.join(d, "init")
        procs = [ctx.Process(target=_gloo_rank, args=(r, init, iters, tokens, queue)) for r in range(2)]
        for p in procs:
            p.start()
        out = queue.get(timeout=300)
        for p in procs:
            p.join(timeout=60)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--iters", type=int, default=200, help="collective / check repetitions (median)")
    ap.add_argument("--repeats", type=int, default=2, help="token_stats repetitions (best)")
    ap.add_argument("--quick", action="store_true",
                    help="check that it runs, not a measurement: --tokens 256 --vocab 32000 --iters 20 --repeats 1")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.vocab, args.iters, args.repeats = 256, 32000, 20, 1

    gloo = gloo_times(args.iters, args.tokens)  # before the big tensor exists (forked ranks stay small)

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.tokens, args.vocab, generator=g) * 2).to(torch.bfloat16)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    mh.token_stats(logits[:8], labels[:8], impl="torch")  # warm-up
    t_ts = min(_median_time(lambda: mh.token_stats(logits, labels, impl="torch"), 1) for _ in range(args.repeats))
    stats = mh.token_stats(logits, labels, impl="torch")
    del logits

    from megatron_hesnr.metric import tp_merge

    def cold():  # the power tables are cached per token count: a new count rebuilds them
        tp_merge._weights.cache_clear()
        labels_checksums(labels)

    t_sum_cold = _median_time(cold, 5)
    labels_checksums(labels)
    t_sum = _median_time(lambda: labels_checksums(labels), args.iters)
    acc = mh.HESNRAccumulator()
    t_check = _median_time(lambda: acc._check_stats_k(stats), args.iters)
    t_update = _median_time(lambda: mh.HESNRAccumulator().update(stats), 20)

    per_call = t_sum + gloo["header_gather_s"]
    rows = [
        ("token_stats (bf16, reference, TP=1)", t_ts, f"{args.tokens} x {args.vocab}", ""),
        ("  per TP call: label checksums (warm)", t_sum, "-", f"{100 * t_sum / t_ts:.4f}%"),
        ("  per TP call: label checksums (new token count)", t_sum_cold, "-", f"{100 * t_sum_cold / t_ts:.4f}%"),
        ("  per TP call: header all-gather, gloo 2 ranks", gloo["header_gather_s"],
         f"{8 * HEADER_SIZE} B/rank", f"{100 * gloo['header_gather_s'] / t_ts:.4f}%"),
        ("  per update: k / H_k <= ln k check", t_check, "-", f"{100 * t_check / t_ts:.4f}%"),
        ("  (update itself, for scale)", t_update, "-", f"{100 * t_update / t_ts:.4f}%"),
        ("  per all_reduce: fingerprint all-gather", gloo["fingerprint_gather_s"],
         f"{8 * len(FINGERPRINT_FIELDS)} B/rank", f"{100 * gloo['fingerprint_gather_s'] / t_ts:.4f}%"),
        ("  (state all-reduce itself, for scale)", gloo["state_all_reduce_s"], f"{gloo['state_bytes']} B/rank", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'time/call':>12}  {'wire':>18}  {'of token_stats':>14}")
    for name, t, wire, pct in rows:
        print(f"{name:<{width}}  {t * 1e3:>9.3f} ms  {wire:>18}  {pct:>14}")
    total = per_call + t_check
    print(f"per-call checks (checksums + header gather + update check): {total * 1e3:.3f} ms = "
          f"{100 * total / t_ts:.4f}% of one token_stats call (target < 1%): {'OK' if total < 0.01 * t_ts else 'OVER'}")
    return 0 if total < 0.01 * t_ts else 1


if __name__ == "__main__":
    sys.exit(main())
