"""The compiled Triton kernel on a GPU, at Megatron's real widths (skips without CUDA)."""
from __future__ import annotations

import os

import pytest
import torch

from megatron_hesnr import token_stats
from megatron_hesnr.metric.shard_stats import shard_stats_torch
from megatron_hesnr.metric.token_stats import resolve_impl
from megatron_hesnr.metric.vocab import VocabShard

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "") == "1",
                       reason="compiled-kernel tests; TRITON_INTERPRET=1 is set"),
]

V_FULL = 151936


def _modes():
    from megatron_hesnr.metric.kernels.triton_shard_stats import has_tl_topk

    return ["select", "bitonic"] if has_tl_topk() else ["select"]


def _check(kern, ref, rows, real):
    ok = ~torch.isnan(ref.max)
    assert torch.equal(torch.isnan(kern.max), ~ok)
    assert torch.equal(kern.max[ok], ref.max[ok])
    assert torch.equal(kern.target[ok], ref.target[ok])
    assert torch.equal(kern.topk[ok], ref.topk[ok])
    x = rows[ok, :real].double()
    truth = torch.exp(x - x.amax(dim=1, keepdim=True)).sum(dim=1)
    err_k = ((kern.sumexp[ok].double() - truth) / truth).abs()
    err_r = ((ref.sumexp[ok].double() - truth) / truth).abs()
    assert torch.all(err_k <= err_r + 1e-6), (err_k.max().item(), err_r.max().item())


@pytest.mark.parametrize("v,real,start", [(V_FULL, V_FULL, 0), (V_FULL // 8, V_FULL // 8 - 37, 7 * (V_FULL // 8))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_matches_reference_on_gpu(v, real, start, dtype):
    from megatron_hesnr.metric.kernels.triton_shard_stats import shard_stats_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    s, b = 48, 2
    sbv = (torch.randn(s, b, v, device="cuda", generator=gen) * 4).to(dtype)
    rows = sbv.view(s * b, v)
    rows[3, 11] = float("nan")
    rows[5, :real].fill_(1.0)  # one value everywhere: ties across every tile
    labels = torch.randint(start - 5, start + v + 5, (s * b,), device="cuda", generator=gen)
    shard = VocabShard(start, v, real)
    ref = shard_stats_torch(rows, labels, shard, 10)
    for mode in _modes():
        for k in (1, 10, 16):
            ref_k = ref if k == 10 else shard_stats_torch(rows, labels, shard, k)
            _check(shard_stats_triton(rows, labels, shard, k, mode=mode), ref_k, rows, real)
    for splits in (2, 4, 16):  # split-row mode, merged on the device
        _check(shard_stats_triton(rows, labels, shard, 10, splits=splits), ref, rows, real)


def test_auto_picks_kernel_on_cuda_and_matches_torch():
    logits = torch.randn(2, 64, 4099, device="cuda", dtype=torch.bfloat16).transpose(0, 1)
    labels = torch.randint(0, 4000, (64, 2), device="cuda")
    assert resolve_impl("auto", logits) == "triton"
    got = token_stats(logits, labels, vocab_size=4000, impl="auto")
    want = token_stats(logits, labels, vocab_size=4000, impl="torch")
    for name in ("entropy", "logp", "logq"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-6, atol=1e-6)
    assert torch.equal(got.in_topk, want.in_topk) and torch.equal(got.valid, want.valid)
