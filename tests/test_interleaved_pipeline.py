"""Interleaved pipeline stages (VP=2) through megatron-core's real interleaved schedule.

Every schedule call of an interleaved pipeline needs a whole number of rounds of
micro-batches.  The pass once rounded the count up *after* sizing its step, so the
extra micro-batches read windows of the next step and scored them twice; here the
counts of PP=2 and PP=3 with VP=2, at the default and at odd ``--hesnr-num-microbatches``,
must equal the single-process reference (gloo, CPU, one process per stage).
"""
from __future__ import annotations

import pytest

pytest.importorskip("megatron.core")

import hesnr_integration_helpers as H  # noqa: E402
from distributed_harness import assert_state_match, run_world  # noqa: E402

VP = 2
NUM_MICROBATCHES = (None, 3, 5)


def _world(rank, world):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps

    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.eval_pass import plan_set

    ps.initialize_model_parallel(pipeline_model_parallel_size=world, virtual_pipeline_model_parallel_size=VP)
    weights = H.full_weights()
    config = H.transformer_config(pp=world, virtual_pipeline_model_parallel_size=VP)
    model = H.model_chunks(lambda pre_process, post_process, vp_stage: H.TinyLM(
        config, weights, pre_process=pre_process, post_process=post_process), VP)
    wset = plan_set("p", H.make_dataset(1), H.SEQ, "window", H.SEQ // 2)
    out = {}
    for nmb in NUM_MICROBATCHES:
        cfg = HESNRConfig(datasets=(EvalDataset("p", "p"),), metric=AccumulatorConfig(num_bins=64), impl="torch",
                          num_microbatches=nmb,
                          length_multiple=4)
        with H.schedules_on_cpu():
            acc, plan = H.run_pass(model, wset, cfg, vocab=H.VOCAB, padded_vocab=H.PADDED_VOCAB, seq_length=H.SEQ)
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            out[nmb] = (acc.state.clone(), acc.compute()["num_tokens"], plan.summary())
    ps.destroy_model_parallel()
    return out, len(wset.windows)


@pytest.mark.parametrize("pp", [2, 3])
def test_interleaved_counts_equal_single_process(pp, tmp_path):
    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.eval_pass import plan_set

    results = run_world(_world, pp, tmp_path)
    got, num_windows = results[-1]
    cfg = HESNRConfig(datasets=(EvalDataset("p", "p"),), metric=AccumulatorConfig(num_bins=64), impl="torch")
    ref = H.reference_accumulator(plan_set("p", H.make_dataset(1), H.SEQ, "window", H.SEQ // 2), H.full_weights(), cfg)
    want = ref.compute()["num_tokens"]
    assert ref.compute()["num_high_entropy"] > 0 and ref.compute()["top1_acc"] > 0  # the state compared is not trivial
    assert num_windows > 2 * pp * VP  # several schedule calls per set: the case that double-counted
    for nmb in NUM_MICROBATCHES:
        state, tokens, plan = got[nmb]
        assert tokens == want, f"PP={pp} VP={VP} --hesnr-num-microbatches {nmb}: {tokens} tokens, reference {want}"
        assert_state_match(state, ref.state, f"PP={pp} nmb={nmb}")
        assert sum(plan["windows"]) == num_windows
