#!/usr/bin/env python
"""Cost of per-trajectory sums, measured side by side in one run.

For an evaluation set of ``--docs`` trajectories (default 100,000) it measures, with
and without the per-trajectory table: the accumulator's flat buffer (what the one
all-reduce over DP x CP sends), the JSON state in a record, ``update`` on the same
batch of tokens, ``compute()`` (with the linearised stderrs), and one paired
bootstrap of two checkpoints (``hesnr compare``'s core) over all the trajectories.

    python benchmarks/bench_trajectory_sums.py [--docs 100000] [--tokens 1000000] [--bootstrap 2000]
    python benchmarks/bench_trajectory_sums.py --quick     # seconds: that it runs, at tiny sizes
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_hesnr import HESNRAccumulator  # noqa: E402
from megatron_hesnr.metric.accumulator import SCALAR_FIELDS  # noqa: E402
from megatron_hesnr.metric.stderr import paired_bootstrap  # noqa: E402
from megatron_hesnr.metric.token_stats import TokenStats  # noqa: E402


def _stats(n: int, gen: torch.Generator) -> TokenStats:
    h = torch.rand(n, generator=gen) * 2.3
    logp = -torch.rand(n, generator=gen) * 5
    return TokenStats(entropy=h, logp=logp, logq=logp * 0.8, in_topk=torch.rand(n, generator=gen) < 0.9,
                      top1=torch.rand(n, generator=gen) < 0.4, valid=torch.ones(n, dtype=torch.bool))


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--tokens", type=int, default=1_000_000, help="scored tokens in the timed update")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--quick", action="store_true",
                   help="check that it runs, not a measurement: --docs 2000 --tokens 20000 --bootstrap 200")
    a = p.parse_args(argv)
    if a.quick:
        a.docs, a.tokens, a.bootstrap = 2000, 20000, 200
    gen = torch.Generator().manual_seed(0)
    stats = _stats(a.tokens, gen)
    mask = torch.ones(a.tokens, dtype=torch.long)
    doc = torch.randint(0, a.docs, (a.tokens,), generator=gen)
    plain, tracked = HESNRAccumulator(), HESNRAccumulator(num_documents=a.docs)
    plain.update(stats, mask)
    tracked.update(stats, mask, doc)
    res = {"docs": a.docs, "tokens": a.tokens, "categories": plain.config.num_categories}
    res["buffer_bytes"] = {"plain": plain.state.numel() * 8, "tracked": tracked.state.numel() * 8}
    res["json_bytes"] = {"plain": len(json.dumps(plain.state_dict())), "tracked": len(json.dumps(tracked.state_dict()))}
    res["update_s"] = {"plain": _best(lambda: HESNRAccumulator().update(stats, mask)),
                       "tracked": _best(lambda: HESNRAccumulator(num_documents=a.docs).update(stats, mask, doc))}
    res["compute_s"] = {"plain": _best(plain.compute), "tracked": _best(tracked.compute)}
    rows = tracked.trajectory_rows().numpy()
    other = rows.copy()
    other[:, list(SCALAR_FIELDS).index("sum_p_over_h")] *= 1.01
    t0 = time.perf_counter()
    paired_bootstrap(rows, other, SCALAR_FIELDS, n_boot=a.bootstrap, seed=0)
    res["paired_bootstrap_s"] = time.perf_counter() - t0
    mb = 1 / 2 ** 20
    print(f"{a.docs} trajectories x {res['categories']} categories x {len(SCALAR_FIELDS)} fields; "
          f"{a.tokens} scored tokens per update (one category used)")
    print(f"{'':<28}{'plain':>12}{'tracked':>12}{'ratio':>8}")
    for key, unit, scale in (("buffer_bytes", "MiB", mb), ("json_bytes", "MiB", mb), ("update_s", "s", 1.0),
                             ("compute_s", "s", 1.0)):
        x, y = res[key]["plain"], res[key]["tracked"]
        print(f"{key + ' (' + unit + ')':<28}{x * scale:>12.4g}{y * scale:>12.4g}{y / x:>8.1f}")
    print(f"paired bootstrap, {a.bootstrap} resamples over {a.docs} trajectories: {res['paired_bootstrap_s']:.2f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
