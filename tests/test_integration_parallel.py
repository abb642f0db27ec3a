"""The HE-SNR hook under TP / CP / PP / DP / EP layouts (gloo, CPU) equals the reference.

Each layout is its own 4-rank world (so a failing layout is named in the test id); the hook runs through the real ``get_forward_backward_func``
schedule (the 1F1B pipeline schedule when PP > 1) with the real vocab-parallel
``ColumnParallelLinear`` output layer, and its reduced accumulator must equal one
computed in a single process from full-vocabulary logits of the unsplit model, down to
the per-trajectory sums: trajectories are longer than ``--seq-length`` (several sliding
windows each) and under DP > 1 the windows of one trajectory run on different DP ranks,
so only the one all-reduce brings a trajectory's row together.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("megatron.core")

import hesnr_integration_helpers as H  # noqa: E402
from distributed_harness import STDERR_REL, run_world  # noqa: E402

# (tp, cp, pp, ep, logits capture): auto is the chunked capture (TinyLM takes output_processor)
LAYOUTS = [
    (2, 1, 1, 1, "labels_none"),
    (1, 2, 1, 1, "output_processor"),
    (2, 2, 1, 1, "output_layer_hook"),
    (2, 1, 2, 1, "chunked"),
    (1, 2, 2, 1, "auto"),
    (1, 1, 1, 2, "output_processor"),
    (2, 1, 1, 2, "auto"),
]


def _layout(rank, world, li, tmpdir):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.eval_pass import plan_set
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    sets = {"p1": H.make_dataset(1), "p2": H.make_dataset(2, n=4, max_len=70)}
    weights = H.full_weights()
    torch.manual_seed(0)
    tp, cp, pp, ep, capture = LAYOUTS[li]
    with H.model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                          context_parallel_size=cp, expert_model_parallel_size=ep) as ps:
        config = H.transformer_config(tp, pp, cp)
        model = H.TinyLM(config, weights, pre_process=ps.is_pipeline_first_stage(),
                         post_process=ps.is_pipeline_last_stage())
        jsonl = f"{tmpdir}/layout{li}.jsonl"
        cfg = HESNRConfig(datasets=(EvalDataset("p1", "p1"), EvalDataset("p2", "p2")),
                          metric=AccumulatorConfig(num_bins=64),
                          window_stride=5 if li % 2 else None, long_policy="window", logits_capture=capture,
                          logits_chunk=3 if capture == "chunked" else "auto",  # auto: one chunk here
                          num_microbatches=2, jsonl=jsonl, impl="torch", report_categories=("action", "thought"))
        args = SimpleNamespace(seq_length=H.SEQ, padded_vocab_size=H.PADDED_VOCAB, iteration=100 + li,
                               skip_train=True, load=f"{tmpdir}/ckpt", consumed_train_samples=1234)
        hook = MegatronHESNRHook(cfg, get_args=lambda: args, open_dataset=sets.__getitem__,
                                 get_wandb_writer=lambda: None)
        model.train()
        rng = torch.get_rng_state()
        with H.schedules_on_cpu():
            data = hook.non_loss_data_func([model])
            again = hook.non_loss_data_func([model])  # the test-set evaluation at the same iteration
        assert again is None
        assert model.training and torch.equal(rng, torch.get_rng_state())
        if rank != world - 1:
            assert data is None
            return
        refs, dp = {}, ps.get_data_parallel_world_size()
        for name in sets:
            wset = plan_set(name, sets[name], H.SEQ, "window", cfg.stride_for(H.SEQ))
            ref = refs[name] = H.reference_accumulator(wset, weights, cfg)
            got = data["sets"][name]["metrics"]
            want = ref.compute()
            where = f"layout tp={tp} cp={cp} pp={pp} ep={ep} {capture}, set {name}"
            assert want["num_high_entropy"] > 0 and want["top1_acc"] > 0, (where, want)  # not a vacuous match
            for key in ("num_tokens", "num_high_entropy", "num_invalid"):
                assert got[key] == want[key], (where, key, got[key], want[key])
            for key in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "mean_entropy"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, nan_ok=True), (where, key, got[key], want[key])
            assert set(got["by_category"]) == set(want["by_category"]), where
            assert data["sets"][name]["hist"]["count"] == ref.histogram()["count"], where
            # Trajectory 0 scores nothing: the stderrs count the trajectories with scored tokens.
            assert got["num_documents"] == want["num_documents"] == len(sets[name]) - 1, where
            assert got["hesnr_stderr"] > 0, where
            for key in ("hesnr_stderr", "he_ppl_stderr", "ppl_stderr", "top1_acc_stderr"):
                assert got[key] == pytest.approx(want[key], rel=STDERR_REL, nan_ok=True), (where, key)
            spread = H.windows_by_dp_rank(hook._plans[name], wset, dp)
            windows_of = [i for i, _ in wset.windows]
            assert max(windows_of.count(i) for i in windows_of) > 1, where  # sliding windows
            if dp > 1:  # some trajectory's windows ran on different DP ranks
                assert max(len(r) for r in spread.values()) > 1, (where, spread)
        recs = [json.loads(line) for line in open(jsonl)]
        assert [r["dataset"] for r in recs] == ["p1", "p2"]
        for r in recs:
            assert list(r) == ["iteration", "consumed_samples", "checkpoint", "run", "dataset", "time",
                               "writer", "config", "metrics", "state"]
            assert r["iteration"] == 100 + li and r["consumed_samples"] == 1234
            assert r["checkpoint"] == f"{tmpdir}/ckpt/iter_{100 + li:07d}" and r["run"] == "ckpt"
            assert r["state"]["reduced"] is True
            assert r["state"]["config"]["num_documents"] == len(sets[r["dataset"]])
            H.trajectory_tables_match(r["state"], refs[r["dataset"]], f"layout {li} set {r['dataset']}")
            assert r["metrics"]["hesnr_stderr"] == pytest.approx(refs[r["dataset"]].compute()["hesnr_stderr"], rel=STDERR_REL)


@pytest.mark.parametrize("li", range(len(LAYOUTS)), ids=[f"tp{t}-cp{c}-pp{p}-ep{e}-{cap}" for t, c, p, e, cap in LAYOUTS])
def test_hook_matches_reference_under_parallel_layouts(li, tmp_path):
    run_world(_layout, 4, tmp_path, li, str(tmp_path))


def _observed_tokens(rank, world, tmpdir):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_hesnr.evaluation.capture import LogitsCapture
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.eval_pass import HESNRPass, plan_set
    from megatron_hesnr.megatron_lm.topology import topology_from_parallel_state

    seen = []

    def observer(name, stats, mask, doc, target):
        sel = doc >= 0
        seen.append((name, doc[sel].tolist(), target[sel].tolist(), mask[sel].tolist(), bool(stats.valid[sel].all())))

    with H.model_parallel(context_parallel_size=2):
        model = H.TinyLM(H.transformer_config(1, 1, 2), H.full_weights()).eval()
        cfg = HESNRConfig(datasets=(EvalDataset("p", "p"),), window_stride=5, num_microbatches=2, impl="torch")
        wset = plan_set("p", H.make_dataset(2, n=4, max_len=70), H.SEQ, "window", 5)
        topo = topology_from_parallel_state(torch.device("cpu"))
        p = HESNRPass(cfg, vocab_size=H.VOCAB, seq_length=H.SEQ, topology=topo,
                      forward_backward_func=get_forward_backward_func(), capture=LogitsCapture("labels_none"),
                      padded_vocab_size=H.PADDED_VOCAB, token_observer=observer)
        with H.schedules_on_cpu(), torch.no_grad():
            p.run([model], wset)
    return seen


def test_token_observer_places_every_token_under_cp_and_dp(tmp_path):
    """The token observer's trajectory and target position of every token survive the CP split and
    the DP sharding: over the DP x CP ranks each scored target is seen exactly once, with its category."""
    ds = H.make_dataset(2, n=4, max_len=70)
    seen = {}
    for rank_seen in run_world(_observed_tokens, 4, tmp_path, str(tmp_path)):
        for name, docs, targets, masks, valid in rank_seen:
            assert name == "p" and valid
            for d, t, m in zip(docs, targets, masks):
                tokens, mask = ds[d]
                assert 1 <= t < len(tokens), (d, t)
                if m:
                    assert m == mask[t], (d, t)
                    seen[(d, t)] = seen.get((d, t), 0) + 1
    want = {(d, t) for d in range(len(ds)) for t in range(1, len(ds[d][0])) if ds[d][1][t]}
    assert set(seen) == want and set(seen.values()) == {1}
