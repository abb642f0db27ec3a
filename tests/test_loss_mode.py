""""Loss + metric" mode: ``token_stats(...).nll`` is the per-token cross-entropy.

It must equal plain PyTorch cross-entropy and megatron-core's
``vocab_parallel_cross_entropy`` (TP=1, no vocabulary padding), for the reference
and for the fused kernel.  Megatron's function reads the tensor-parallel group
from ``parallel_state``, so it runs in a fresh process with a 1-rank gloo group
(and ``TRITON_INTERPRET=1``, so the kernel runs on CPU there too).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from megatron_hesnr import token_stats
from conftest import REPO


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nll_equals_torch_cross_entropy(dtype):
    gen = torch.Generator().manual_seed(0)
    s, b, v = 6, 3, 257
    logits = (torch.randn(s, b, v, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, v, (s, b), generator=gen)
    labels[2, 1] = -100
    nll = token_stats(logits, labels, impl="torch").nll
    ce = F.cross_entropy(logits.float().reshape(-1, v), labels.reshape(-1), reduction="none",
                         ignore_index=-100).view(s, b)
    valid = labels >= 0
    assert torch.isnan(nll[~valid]).all()
    torch.testing.assert_close(nll[valid], ce[valid].double(), rtol=0, atol=2e-6)


_MEGATRON_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import torch, torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], world_size=1, rank=0)
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from megatron_hesnr import token_stats

    gen = torch.Generator().manual_seed(1)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        s, b, v = 5, 2, 301
        logits = (torch.randn(s, b, v, generator=gen) * 5).to(dtype)   # Megatron's [s, b, V]
        labels = torch.randint(0, v, (s, b), generator=gen)
        # Megatron subtracts the max in place on its fp32 view: give it a copy.
        ce = vocab_parallel_cross_entropy(logits.clone(), labels).double()
        for impl in ("torch", "triton"):
            nll = token_stats(logits, labels, impl=impl).nll
            out[name + "/" + impl] = (nll - ce).abs().max().item()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    print("RESULT " + json.dumps(out))
    """
)


def test_nll_equals_megatron_vocab_parallel_cross_entropy(tmp_path):
    pytest.importorskip("megatron.core")
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _MEGATRON_SCRIPT, str(tmp_path / "pg_store")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    diffs = json.loads(lines[-1][len("RESULT "):])
    assert set(diffs) == {"fp32/torch", "fp32/triton", "bf16/torch", "bf16/triton"}
    # Megatron computes in fp32; ours is fp64 from fp32 shard records.
    assert all(d <= 5e-6 for d in diffs.values()), diffs
