"""float64 logits are computed in float64 by the reference (issue 16, case 6)."""
from __future__ import annotations

import math

import torch

import megatron_hesnr as mh
from megatron_hesnr.metric.shard_stats import shard_stats_torch
from megatron_hesnr.metric.vocab import vocab_shard


def test_near_ties_below_fp32_resolution_keep_their_order():
    # 1 + 1e-12 rounds to 1 in fp32: the two leaders would tie and both count as top 1.
    logits = torch.zeros(2, 40, dtype=torch.float64)
    logits[:, 0], logits[:, 1] = 1.0, 1.0 + 1e-12
    logits[:, 2:12] = torch.linspace(0.5, 0.9, 10, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    s = mh.token_stats(logits, labels, k=10, impl="torch")
    assert s.top1.tolist() == [False, True]
    # Label 12 (0.0, the 11th largest) is just outside the top 10 only when the
    # k-th value (0.5 + 7 * 0.4 / 9 ~ 0.811 here) is kept exactly; check against fp64 truth.
    kth = torch.topk(logits[0], 10).values[-1]
    assert bool(s.in_topk[0]) == bool(logits[0, 0] >= kth)
    assert s.logp.dtype == torch.float64


def test_values_beyond_fp32_range_stay_valid():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 64, generator=g, dtype=torch.float64) * 3
    logits[:, :2] = 1e39  # inf in fp32: the row would be invalid
    logits[1] *= 2e300 / 1e39  # far beyond, still finite in fp64
    labels = torch.tensor([0, 1, 10])
    s = mh.token_stats(logits, labels, k=10, impl="torch")
    assert s.valid.all()
    ref = torch.log_softmax(logits, dim=-1)[torch.arange(3), labels]
    torch.testing.assert_close(s.logp, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.entropy[:2], torch.full((2,), math.log(2), dtype=torch.float64))


def test_reference_records_are_fp64_for_fp64_logits():
    x = torch.randn(5, 30, dtype=torch.float64)
    rec = shard_stats_torch(x, torch.arange(5), vocab_shard(0, 30), k=4)
    assert rec.max.dtype == rec.topk.dtype == torch.float64
    assert torch.equal(rec.topk, torch.topk(x, 4).values)  # exact copies of the fp64 logits
