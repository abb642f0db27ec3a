"""The chunked capture's statistics (made from hidden states x the output weight, a chunk of positions at a
time) equal those of the whole logits: one rank, and TP 2 with and without sequence parallelism through
megatron-core's real ``ColumnParallelLinear`` (gloo, CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from megatron_hesnr.evaluation.chunked_stats import (
    LOGITS_BUDGET_BYTES,
    StatsRequest,
    auto_chunk_positions,
    chunked_token_stats,
)
from megatron_hesnr.evaluation.config import HESNRConfig, HESNRConfigError
from megatron_hesnr.metric.token_stats import TENSOR_FIELDS, TokenStats, token_stats

from distributed_harness import run_world

V_TRUE, V_PAD, H, S, B = 90, 96, 8, 12, 2


class Head(torch.nn.Module):
    """The output layer's contract (``ColumnParallelLinear.forward``); counts the rows it is given."""

    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.calls = []

    def forward(self, x, weight=None, runtime_gather_output=None):
        assert runtime_gather_output is False
        self.calls.append(x.shape[0])
        return x @ (self.weight if weight is None else weight).t(), None


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(S, B, H, generator=g)
    weight = torch.randn(V_PAD, H, generator=g) * 2
    labels = torch.randint(0, V_TRUE, (B, S), generator=g)
    labels[0, 3] = -100          # not scorable
    labels[1, 5] = V_TRUE + 2    # padding id: not scorable
    return hidden, weight, labels


def _request(labels, chunk, **kw):
    return StatsRequest(labels=labels, k=kw.pop("k", 10), vocab_size=V_TRUE, padded_vocab_size=kw.pop("padded", V_PAD),
                        tp_group=kw.pop("tp_group", None), tp_size=kw.pop("tp_size", 1), impl="torch", chunk=chunk)


def _assert_equal(got: TokenStats, want: TokenStats, what=""):
    for name in TENSOR_FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        if a.dtype == torch.bool:
            assert torch.equal(a, b), (what, name)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, equal_nan=True, msg=f"{what} {name}")


@pytest.mark.parametrize("chunk", [1, 5, S, 1000, "auto"])
def test_equals_the_whole_logits_one_rank(chunk):
    hidden, weight, labels = _data()
    head = Head(weight)
    scale = 0.7
    packed = chunked_token_stats(hidden_states=hidden, output_layer=head, request=_request(labels, chunk),
                                 scale_logits=lambda z: z * scale)
    assert packed.shape == (S, B, len(TENSOR_FIELDS)) and packed.dtype == torch.float64
    step = S if chunk in ("auto", 1000) else chunk
    assert head.calls == [min(step, S - lo) for lo in range(0, S, step)]  # chunk by chunk
    want = token_stats((hidden @ weight.t()) * scale, labels.t(), vocab_size=V_TRUE, impl="torch")
    got = TokenStats.unpack(packed, k=10)
    _assert_equal(got, want, f"chunk {chunk}")
    assert not got.valid[3, 0] and not got.valid[5, 1] and got.valid.sum() == S * B - 2


def test_shared_weight_is_used_and_shapes_are_checked():
    hidden, weight, labels = _data(1)
    head = Head(torch.zeros_like(weight))
    got = chunked_token_stats(hidden_states=hidden, output_layer=head, request=_request(labels, 4), output_weight=weight)
    want = token_stats(hidden @ weight.t(), labels.t(), vocab_size=V_TRUE, impl="torch")
    _assert_equal(TokenStats.unpack(got, k=10), want, "tied weight")
    with pytest.raises(RuntimeError, match=r"hidden states \(11, 2, 8\) do not match labels \[s=12, b=2\]"):
        chunked_token_stats(hidden_states=hidden[:-1], output_layer=head, request=_request(labels, 4))
    with pytest.raises(ValueError, match=r"96 columns per rank; expected 200 / TP=1"):
        chunked_token_stats(hidden_states=hidden, output_layer=head, request=_request(labels, 4, padded=200))


def test_auto_chunk_is_the_logits_budget():
    # 129280 columns of fp32 at micro-batch 1: 519 positions make 256 MiB.
    assert auto_chunk_positions(1, 129_280, 4) == LOGITS_BUDGET_BYTES // (129_280 * 4) == 519
    assert auto_chunk_positions(2, 16_160, 2) == LOGITS_BUDGET_BYTES // (2 * 16_160 * 2)
    assert auto_chunk_positions(64, 10**9, 4) == 1


def test_chunk_flag_checked():
    assert HESNRConfig(logits_chunk="64").logits_chunk == 64
    assert HESNRConfig(logits_chunk="auto", logits_capture="labels_none").logits_chunk == "auto"
    for bad in ("0", "-3", "many", 2.5, True):
        with pytest.raises(HESNRConfigError, match=r"^--hesnr-logits-chunk: must be a positive number"):
            HESNRConfig(logits_chunk=bad)
    with pytest.raises(HESNRConfigError, match=r"^--hesnr-logits-chunk: applies to the chunked capture only"):
        HESNRConfig(logits_chunk=64, logits_capture="labels_none")


def _tp2(rank, world, sequence_parallel):
    import warnings

    warnings.filterwarnings("ignore")
    pytest.importorskip("megatron.core")
    from megatron.core import parallel_state as ps
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear

    from megatron_hesnr.megatron_lm.cpu_shim import schedules_on_cpu

    hidden, weight, labels = _data(2)
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    try:
        group = ps.get_tensor_model_parallel_group()
        config = ModelParallelConfig(tensor_model_parallel_size=2, sequence_parallel=sequence_parallel,
                                     use_cpu_initialization=True, params_dtype=torch.float32)
        layer = ColumnParallelLinear(H, V_PAD, config=config, init_method=torch.nn.init.zeros_, bias=False,
                                     gather_output=False, skip_bias_add=False, tp_group=group)
        rows = V_PAD // 2
        with torch.no_grad():
            layer.weight.copy_(weight[rank * rows:(rank + 1) * rows])
        local = hidden[rank * S // 2:(rank + 1) * S // 2] if sequence_parallel else hidden
        out = {}
        for chunk in (4, 5, "auto"):
            with torch.no_grad(), schedules_on_cpu():  # the sequence-parallel gather's buffer on the CPU
                packed = chunked_token_stats(hidden_states=local, output_layer=layer,
                                             request=_request(labels, chunk, tp_group=group, tp_size=2))
            out[chunk] = packed
        return out
    finally:
        ps.destroy_model_parallel()


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2-sp"])
def test_tp2_with_and_without_sequence_parallel(sequence_parallel, tmp_path):
    pytest.importorskip("megatron.core")
    hidden, weight, labels = _data(2)
    want = token_stats(hidden @ weight.t(), labels.t(), vocab_size=V_TRUE, impl="torch")
    for rank, out in enumerate(run_world(_tp2, 2, tmp_path, sequence_parallel)):
        for chunk, packed in out.items():
            assert packed.shape == (S, B, len(TENSOR_FIELDS))
            _assert_equal(TokenStats.unpack(packed, k=10), want, f"rank {rank} chunk {chunk}")


def test_bench_logits_memory_quick(tmp_path):
    """``benchmarks/bench_logits_memory.py --quick`` runs to the end (a check of the script, not a
    measurement): the real pass with the whole logits and chunked, TP 2, the metrics equal."""
    pytest.importorskip("megatron.training")  # GPTModel with output_processor: megatron-core >= 0.18 (py312 leg)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_logits_memory.py"), "--quick"],
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "full peak" in out and "metrics of every chunked pass equal the full pass's to 1e-06: True" in out, out[-4000:]
    print(f"bench_logits_memory.py --quick: {time.perf_counter() - t0:.1f} s")


def test_start_up_line_names_capture_and_chunk():
    from megatron_hesnr.evaluation.capture import describe_capture

    line = describe_capture("auto", "auto", has_output_processor=True, model_name="GPTModel")
    assert line == ("logits capture chunked (statistics made inside GPTModel's output_processor, chunks of 256 MiB "
                    "of logits per rank; the whole logits are never built)")
    assert "chunks of 512 positions" in describe_capture("chunked", 512, has_output_processor=True)
    # HybridModel has no output_processor: today's capture, and the line says why.
    line = describe_capture("auto", "auto", has_output_processor=False, model_name="HybridModel")
    assert line == ("logits capture labels_none (a micro-batch's whole logits [s, b, V/TP] are built; "
                    "HybridModel.forward takes no output_processor; --hesnr-logits-chunk does not apply)")
    assert describe_capture("auto", "auto", has_output_processor=False, mtp=True).startswith(
        "logits capture output_layer_hook ")
    assert describe_capture("output_processor", "auto", has_output_processor=True).startswith(
        "logits capture output_processor (a micro-batch's whole logits")
