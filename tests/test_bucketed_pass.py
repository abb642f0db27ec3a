"""Length-bucketed pass == padded pass, under every parallel layout, with real megatron-core models.

One 2-rank gloo world walks through TP=2, PP=2, interleaved PP=2 x VP=2 and DP=2 with a
tiny megatron-core ``GPTModel`` (local spec, RoPE, causal mask type), and CP=2 with the
per-token test LM (the local spec has no context-parallel attention: that needs Transformer
Engine).  The set mixes trajectories shorter and longer than ``--seq-length`` (sliding
windows), so buckets of several lengths and full-length windows both occur.  For each
layout the bucketed pass must give the padded pass's accumulator state (per-trajectory
sums included) and metrics (1e-6 relative, fp32; counts exact), while feeding fewer positions.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("megatron.core")

import hesnr_integration_helpers as H  # noqa: E402
from distributed_harness import assert_metrics_match, assert_state_match, run_world  # noqa: E402

V_TRUE, V_PAD, S = 200, 256, 32
# name: (tp, cp, pp, vp, micro-batch size, model)
LAYOUTS = {
    "tp2": (2, 1, 1, None, 1, "gpt"),
    "pp2": (1, 1, 2, None, 1, "gpt"),
    "pp2xvp2": (1, 1, 2, 2, 1, "gpt"),
    "dp2_mbs2": (1, 1, 1, None, 2, "gpt"),
    "cp2": (1, 2, 1, None, 1, "tiny"),
}


LENGTHS = (4, 7, 12, 18, 23, 27, 33, 41, 75, 100)  # some shorter, some longer than S + 1 tokens


def _dataset(vocab=V_TRUE, lengths=LENGTHS):
    import numpy as np

    rng = np.random.default_rng(5)
    items = []
    for n in lengths:
        mask = rng.choice(np.array([0, 1, 1, 2, 3], dtype=np.uint8), size=n)
        mask[0] = 0
        items.append((rng.integers(0, vocab, size=n).astype(np.int64), mask))
    return H.MemoryDataset(items, vocab_size=vocab)


def _gpt_chunk(tp, pp, vp):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=4, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                               tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                               virtual_pipeline_model_parallel_size=vp, use_cpu_initialization=True,
                               add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
                               pipeline_dtype=torch.float32)

    def make(pre_process, post_process, vp_stage):
        torch.manual_seed(7)
        return GPTModel(config, get_gpt_layer_local_spec(), vocab_size=V_PAD, max_sequence_length=S,
                        pre_process=pre_process, post_process=post_process, position_embedding_type="rope",
                        vp_stage=vp_stage)

    return make


def _world(rank, world):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps

    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.eval_pass import plan_set

    wset = plan_set("d", _dataset(), S, "window", S // 2)
    tiny_set = plan_set("d", _dataset(H.VOCAB, [n // 2 for n in LENGTHS]), H.SEQ, "window", H.SEQ // 2)
    out = {}
    for name, (tp, cp, pp, vp, mbs, kind) in LAYOUTS.items():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp,
                                     pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vp)
        with H.schedules_on_cpu():
            if kind == "gpt":
                model = H.model_chunks(_gpt_chunk(tp, pp, vp), vp)
                vocab, padded = V_TRUE, V_PAD
            else:
                model = [H.TinyLM(H.transformer_config(cp=cp), H.full_weights())]
                vocab, padded = H.VOCAB, H.PADDED_VOCAB
            runs = {}
            for pad in (True, False):
                cfg = HESNRConfig(datasets=(EvalDataset("d", "d"),), metric=AccumulatorConfig(num_bins=64),
                                  impl="torch", micro_batch_size=mbs,
                                  length_multiple=4, pad_to_seq_length=pad)
                data = wset if kind == "gpt" else tiny_set
                acc, plan = H.run_pass(model, data, cfg, vocab=vocab, padded_vocab=padded,
                                       seq_length=S if kind == "gpt" else H.SEQ)
                if ps.is_pipeline_last_stage(ignore_virtual=True):
                    runs[pad] = (acc.state.clone(), acc.compute(), plan.summary())
        if runs:
            out[name] = runs
        ps.destroy_model_parallel()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return run_world(_world, 2, tmp_path_factory.mktemp("bucketed"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bucketed_equals_padded(world, layout):
    seq = S if LAYOUTS[layout][-1] == "gpt" else H.SEQ
    seen = 0
    for rank, result in enumerate(world):
        if layout not in result:
            continue  # not the last pipeline stage
        seen += 1
        (pad_state, pad_metrics, pad_plan), (b_state, b_metrics, b_plan) = result[layout][True], result[layout][False]
        where = f"{layout} rank {rank}"
        assert pad_metrics["num_tokens"] > 0 and pad_metrics["num_high_entropy"] > 0, where
        assert pad_metrics["top1_acc"] > 0, where
        # The states include the per-trajectory sums: bucketing leaves every trajectory's row as it was.
        assert pad_metrics["num_documents"] >= len(LENGTHS) - 1 and pad_metrics["hesnr_stderr"] > 0, where
        for key in ("num_tokens", "num_high_entropy", "num_invalid"):
            assert b_metrics[key] == pad_metrics[key], (where, key)
        assert_state_match(b_state, pad_state, where)
        assert_metrics_match(b_metrics, pad_metrics, where)
        # Both plans feed every window once; bucketing feeds shorter sequences and full-length windows.
        assert pad_plan["lengths"] == [seq] and sum(b_plan["windows"]) == pad_plan["windows"][0]
        assert len(b_plan["lengths"]) >= 2 and min(b_plan["lengths"]) < seq and max(b_plan["lengths"]) == seq
        assert b_plan["positions_fed"] < pad_plan["positions_fed"]
        assert b_plan["real_inputs"] == pad_plan["real_inputs"]
    assert seen
