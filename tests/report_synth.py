"""Synthetic evaluation records for the report tests, produced by the real accumulator.

Per-token ``TokenStats`` are built directly from tensors: H_k drawn from a mixture of
modes at ln 1 .. ln 4 (plus uniform noise), the target's top-k probability q_y and
the top-k mass (p = q_y * mass) set so that a checkpoint's "quality" moves HE-SNR.
"""
from __future__ import annotations

import json
import math

import torch

from megatron_hesnr import HESNRAccumulator, TokenStats

LN = math.log


def synth_stats(n: int, quality: float, gen: torch.Generator, *, w3: float = 0.3, w4: float = 0.2,
                sd: float = 0.03) -> TokenStats:
    """``n`` tokens; higher ``quality`` gives the target more probability mass."""
    modes = torch.tensor([0.0, LN(2), LN(3), LN(4)], dtype=torch.float64)
    w = torch.tensor([0.35, 0.15, w3, w4], dtype=torch.float64)
    pick = torch.multinomial(w / w.sum(), n, replacement=True, generator=gen)
    h = modes[pick] + sd * torch.randn(n, generator=gen, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64) < 0.08  # some uniform noise
    h = torch.where(u, torch.rand(n, generator=gen, dtype=torch.float64) * LN(10), h).clamp(0.0, LN(10))
    q = (torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.2 + 0.25 * quality).clamp(1e-6, 1.0)
    mass = (0.6 + 0.3 * torch.rand(n, generator=gen, dtype=torch.float64)).clamp(max=1.0)
    logq = q.log()
    logp = logq + mass.log()
    in_topk = torch.rand(n, generator=gen) < 0.9
    top1 = in_topk & (torch.rand(n, generator=gen) < 0.5)
    valid = torch.rand(n, generator=gen) < 0.99
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return TokenStats(entropy=torch.where(valid, h, nan), logp=torch.where(valid, logp, nan),
                      logq=torch.where(valid, logq, nan), in_topk=in_topk & valid, top1=top1 & valid,
                      valid=valid)


def record_of(acc: HESNRAccumulator, iteration: int, *, run: str | None = "moe-32k",
              checkpoint: str | None = "auto", dataset: str | None = "swe-actions", **extra) -> dict:
    rec = {"iteration": iteration, "consumed_samples": iteration * 64,
           "time": f"2026-11-27T01:{iteration % 60:02d}:00Z", "config": {"hesnr_k": acc.config.k},
           "metrics": acc.compute(), "state": acc.state_dict()}
    if checkpoint == "auto":
        checkpoint = f"/ckpt/{run or 'x'}/iter_{iteration:07d}"
    for key, value in (("run", run), ("checkpoint", checkpoint), ("dataset", dataset)):
        if value is not None:
            rec[key] = value
    rec.update(extra)
    return rec


def make_run(qualities, *, n: int = 3000, seed: int = 0, step: int = 1000, keep_stats: bool = False, **kw):
    """One record per quality value at iterations step, 2*step, ...; optionally the stats."""
    gen = torch.Generator().manual_seed(seed)
    recs, stats = [], []
    for i, quality in enumerate(qualities):
        acc = HESNRAccumulator()
        s = synth_stats(n, quality, gen)
        acc.update(s)
        acc.all_reduce(None)
        recs.append(record_of(acc, (i + 1) * step, **kw))
        stats.append(s)
    return (recs, stats) if keep_stats else recs


def write_jsonl(path, records, extra_lines=()) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=True) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(path)


def write_scores(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("checkpoint,score\n")
        for name, score in rows:
            f.write(f"{name},{score}\n")
    return str(path)
