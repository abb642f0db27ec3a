"""Context, data, expert and pipeline parallelism: every token counted exactly once.

Two 4-rank gloo worlds: one with explicit groups (CP=2, DP=2, CP=2 x DP=2,
TP=2 x CP=2), one built by megatron-core's ``parallel_state`` (TP=2 x EP=2, then
CP=2 x PP=2, then TP=2 x PP=2), each compared with one process holding the whole batch.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import megatron_hesnr as mh
from megatron_hesnr.evaluation.context_parallel import context_parallel_positions, split_for_context_parallel
from megatron_hesnr.evaluation import reduce_metrics
from megatron_hesnr.metric.reduction import reduce_on_last_stage

from distributed_harness import (
    assert_metrics_match,
    assert_state_match,
    assert_stats_match,
    layout_token_stats,
    make_batch,
    reference,
    run_layouts,
    run_world,
    stats_dict,
    tp_slice,
)

WORLD = 4
VOCAB = 997
PADDED = 1008  # padded for TP=2 with divisible-by 8
BATCH, SEQ = 4, 32


def _split_stats(stats, cp_rank, cp_size):
    return stats.map(lambda x: split_for_context_parallel(x, cp_rank, cp_size))


# ------------------------------------------------------------------ CP split
def test_cp_positions_are_chunks_r_and_mirror():
    assert context_parallel_positions(8, 0, 2).tolist() == [0, 1, 6, 7]
    assert context_parallel_positions(8, 1, 2).tolist() == [2, 3, 4, 5]
    seen = torch.cat([context_parallel_positions(24, r, 3) for r in range(3)])
    assert sorted(seen.tolist()) == list(range(24))  # each position on exactly one rank


def test_cp_split_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by 2 \\* context_parallel_size = 4"):
        split_for_context_parallel(torch.zeros(2, 6), 0, 2)
    with pytest.raises(ValueError, match="cp_rank"):
        split_for_context_parallel(torch.zeros(2, 8), 2, 2)
    with pytest.raises(ValueError, match="seq_dim"):
        split_for_context_parallel(torch.zeros(2, 8), 0, 2, seq_dim=2)


@pytest.fixture(scope="module")
def megatron_core():
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    import warnings

    with warnings.catch_warnings():  # no Transformer Engine / Apex on CPU
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state, utils  # noqa: F401
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy  # noqa: F401
    import megatron.core

    return megatron.core


def test_cp_split_equals_megatron_get_batch_on_this_cp_rank(megatron_core, monkeypatch):
    """Through ``compat.megatron_cp_split`` (core 0.19 adds a required ``is_hybrid_cp``).
    Without a process group, core <= 0.18 reads the CP place from ``parallel_state``
    and 0.19 from ``torch.distributed``: both are patched."""
    from megatron_hesnr.evaluation.topology import megatron_cp_split

    ps = megatron_core.parallel_state
    g = torch.Generator().manual_seed(0)
    batch = {
        "tokens": torch.randint(0, 100, (3, 24), generator=g),
        "hidden": torch.randn(3, 24, 5, generator=g),
        "attention_mask": torch.rand(3, 1, 24, 24, generator=g) > 0.5,
    }
    for cp_size in (1, 2, 3, 4):
        for cp_rank in range(cp_size):
            monkeypatch.setattr(ps, "get_context_parallel_world_size", lambda s=cp_size: s)
            monkeypatch.setattr(ps, "get_context_parallel_rank", lambda r=cp_rank: r)
            monkeypatch.setattr(dist, "get_world_size", lambda group=None, s=cp_size: s)
            monkeypatch.setattr(dist, "get_rank", lambda group=None, r=cp_rank: r)
            theirs = megatron_cp_split(None)(batch)
            for key, value in batch.items():
                mine = split_for_context_parallel(value, cp_rank, cp_size, seq_dim=2 if key == "attention_mask" else 1)
                assert torch.equal(mine, theirs[key]), (key, cp_size, cp_rank)


# ------------------------------------------------------- explicit-group world
LAYOUTS = {
    # name: (tp partition, cp partition, reduce partition, dp index of rank)
    "cp2": ([[0], [1], [2], [3]], [[0, 1], [2, 3]], [[0, 1], [2, 3]], lambda r: 0),
    "dp2": ([[0], [1], [2], [3]], [[0], [1], [2], [3]], [[0, 1], [2, 3]], lambda r: r % 2),
    "dp2xcp2": ([[0], [1], [2], [3]], [[0, 1], [2, 3]], [[0, 1, 2, 3]], lambda r: r // 2),
    "tp2xcp2": ([[0, 1], [2, 3]], [[0, 2], [1, 3]], [[0, 2], [1, 3]], lambda r: 0),
}


def _layout_check(rank: int, layout, logits, labels, mask):
    groups, rows, local, stats = layout_token_stats(layout, rank, VOCAB, logits, labels, mask)
    acc = mh.HESNRAccumulator()
    acc.update(stats, local[2])
    metrics = reduce_metrics(acc, groups)  # reduces the state in place: clone it after
    return {"rows": rows, "cp": (groups.cp_rank, groups.cp_size), "stats": stats_dict(stats),
            "state": acc.state.clone(), "metrics": metrics}


@pytest.fixture(scope="module")
def layout_world(tmp_path_factory):
    return run_layouts(LAYOUTS, _layout_check, WORLD, tmp_path_factory.mktemp("layouts"),
                       *make_batch(11, BATCH, SEQ, VOCAB, PADDED))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_device(layout_world, layout):
    logits, labels, mask = make_batch(11, BATCH, SEQ, VOCAB, PADDED)
    ref_stats, ref_acc = reference(logits, labels, mask, VOCAB)
    ref_metrics = ref_acc.compute()
    assert ref_metrics["num_high_entropy"] > 0
    for rank, result in enumerate(layout_world):
        got = result[layout]
        cp_rank, cp_size = got["cp"]
        local_ref = _split_stats(ref_stats.map(lambda x: x[got["rows"]]), cp_rank, cp_size)
        assert_stats_match(got["stats"], local_ref, f"{layout} rank {rank}")
        assert_state_match(got["state"], ref_acc.state, f"{layout} rank {rank}")
        assert_metrics_match(got["metrics"], ref_metrics, f"{layout} rank {rank}")


def test_non_last_stage_takes_no_part():
    acc = mh.HESNRAccumulator()
    # No group is touched (None would mean "size 1" anyway; a bogus object proves it).
    assert reduce_on_last_stage(acc, object(), is_last_stage=False) is None
    assert not acc._reduced
    logits, labels, mask = make_batch(3, 1, 8, 50)
    acc.update(mh.token_stats(logits, labels), mask)
    with pytest.raises(RuntimeError, match="last pipeline stage"):
        reduce_on_last_stage(acc, None, is_last_stage=False)


# ------------------------------------------------------ parallel_state world
def _raise_on_call(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"the metric layer called megatron parallel_state.{name}")

    return fail


def _megatron_checks(rank: int, world: int):
    import warnings

    warnings.simplefilter("ignore")
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron.core.process_groups_config import ProcessGroupCollection

    from megatron_hesnr.evaluation import topology_from_pg_collection
    from megatron_hesnr.megatron_lm import topology_from_parallel_state
    from megatron_hesnr.evaluation.topology import megatron_cp_split

    ranks_of = dist.get_process_group_ranks
    out = {}

    # Phase A: TP=2 x EP=2 (DP=2), built by megatron-core.
    ps.initialize_model_parallel(tensor_model_parallel_size=2, expert_model_parallel_size=2,
                                 create_gloo_process_groups=False)
    groups = topology_from_parallel_state()
    out["a_pgc_same"] = topology_from_pg_collection(ProcessGroupCollection.use_mpu_process_groups()) == groups
    out["a_groups"] = {
        "tp": ranks_of(groups.tp_group), "reduce": ranks_of(groups.reduce_group),
        "dp_cp": ranks_of(ps.get_data_parallel_group(with_context_parallel=True)),
        "ep": ranks_of(ps.get_expert_model_parallel_group()),
        "expert_dp": ranks_of(ps.get_expert_data_parallel_group()),
        "cp": (groups.cp_rank, groups.cp_size), "last": groups.is_last_stage,
    }
    # From here on every parallel_state getter raises: the metric layer must use
    # only the groups it was handed.
    saved = {}
    for name in dir(ps):
        if name.startswith(("get_", "is_", "model_parallel_is")) and callable(getattr(ps, name)):
            saved[name] = getattr(ps, name)
            setattr(ps, name, _raise_on_call(name))
    try:
        try:
            ps.get_tensor_model_parallel_group()
            out["getters_raise"] = False
        except AssertionError:
            out["getters_raise"] = True
        logits, labels, mask = make_batch(21, BATCH, SEQ, VOCAB, PADDED)
        dp_rank, dp_size = dist.get_rank(groups.reduce_group), dist.get_world_size(groups.reduce_group)
        rows = slice(dp_rank * BATCH // dp_size, (dp_rank + 1) * BATCH // dp_size)
        shard = tp_slice(logits[rows], dist.get_rank(groups.tp_group), dist.get_world_size(groups.tp_group))
        stats = mh.token_stats(shard, labels[rows], vocab_size=VOCAB, tp_group=groups.tp_group, impl="torch")
        acc = mh.HESNRAccumulator()
        acc.update(stats, mask[rows])
        out["a_metrics"] = reduce_metrics(acc, groups)
        out["a_state"] = acc.state.clone()
    finally:
        for name, fn in saved.items():
            setattr(ps, name, fn)

    # Target NLL against megatron-core's own vocab-parallel cross entropy (no padding).
    logits, labels, _ = make_batch(22, 2, 16, 1024)
    labels = labels.clamp_min(0)  # megatron's CE has no ignore index
    shard = tp_slice(logits, ps.get_tensor_model_parallel_rank(), 2)
    ours = mh.token_stats(shard, labels, vocab_size=1024, tp_group=groups.tp_group, impl="torch").nll
    theirs = vocab_parallel_cross_entropy(shard.transpose(0, 1).contiguous(), labels.transpose(0, 1).contiguous())
    out["ce"] = (ours.clone(), theirs.transpose(0, 1).double().clone())
    ps.destroy_model_parallel()

    # Phase B: CP=2 x PP=2; only the last stage has logits, the mask is split like the batch.
    ps.initialize_model_parallel(context_parallel_size=2, pipeline_model_parallel_size=2,
                                 create_gloo_process_groups=False)
    groups = topology_from_parallel_state()
    out["b_pgc_same"] = topology_from_pg_collection(ProcessGroupCollection.use_mpu_process_groups()) == groups
    out["b_groups"] = {"tp": groups.tp_group, "reduce": ranks_of(groups.reduce_group) if groups.reduce_group else None,
                       "cp": (groups.cp_rank, groups.cp_size), "last": groups.is_last_stage}
    acc = mh.HESNRAccumulator()
    if groups.is_last_stage:
        logits, labels, mask = make_batch(23, BATCH, SEQ, VOCAB)
        batch = megatron_cp_split(ps.get_context_parallel_group())({"labels": labels.clone(), "loss_mask": mask.clone()})
        local_labels, local_mask = (split_for_context_parallel(t, groups.cp_rank, groups.cp_size)
                                    for t in (labels, mask))
        out["b_split_is_megatron"] = (torch.equal(batch["labels"], local_labels)
                                      and torch.equal(batch["loss_mask"], local_mask))
        local_logits = split_for_context_parallel(logits, groups.cp_rank, groups.cp_size)
        acc.update(mh.token_stats(local_logits, local_labels, impl="torch"), local_mask)
    out["b_metrics"] = reduce_metrics(acc, groups, to_all_ranks=True)
    out["b_state"] = acc.state.clone()
    ps.destroy_model_parallel()

    # Phase C: TP=2 x PP=2; the last stage's TP pair merges, no DP reduction.
    ps.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                 create_gloo_process_groups=False)
    groups = topology_from_parallel_state()
    out["c_groups"] = {"tp": ranks_of(groups.tp_group), "reduce": groups.reduce_group, "last": groups.is_last_stage}
    acc = mh.HESNRAccumulator()
    if groups.is_last_stage:
        logits, labels, mask = make_batch(24, BATCH, SEQ, VOCAB, PADDED)
        shard = tp_slice(logits, dist.get_rank(groups.tp_group), 2)
        acc.update(mh.token_stats(shard, labels, vocab_size=VOCAB, tp_group=groups.tp_group, impl="torch"), mask)
    out["c_metrics"] = reduce_metrics(acc, groups)
    out["c_state"] = acc.state.clone()
    ps.destroy_model_parallel()
    return out


@pytest.fixture(scope="module")
def megatron_world(megatron_core, tmp_path_factory):
    return run_world(_megatron_checks, WORLD, tmp_path_factory.mktemp("megatron"))


def test_parallel_state_groups_with_expert_parallel(megatron_world):
    # Megatron's order tp-cp-ep-dp-pp: TP pairs (0,1), (2,3); DP pairs (0,2), (1,3).
    for rank, result in enumerate(megatron_world):
        g = result["a_groups"]
        assert g["tp"] == [rank - rank % 2, rank - rank % 2 + 1]
        assert g["reduce"] == g["dp_cp"] == [rank % 2, rank % 2 + 2]
        assert g["ep"] == g["reduce"]  # EP=2 spans the DP ranks: they reduce like DP ranks
        assert g["expert_dp"] == [rank]  # never used: it would miss the other EP rank's tokens
        assert g["cp"] == (0, 1) and g["last"]
        assert result["a_pgc_same"] and result["b_pgc_same"]  # ProcessGroupCollection route agrees


def test_tp2_ep2_matches_single_device_with_getters_raising(megatron_world):
    logits, labels, mask = make_batch(21, BATCH, SEQ, VOCAB, PADDED)
    _, ref_acc = reference(logits, labels, mask, VOCAB)
    for rank, result in enumerate(megatron_world):
        assert result["getters_raise"], "the monkeypatch did not take effect"
        assert_state_match(result["a_state"], ref_acc.state, f"rank {rank}")
        assert_metrics_match(result["a_metrics"], ref_acc.compute(), f"rank {rank}")


def test_target_nll_equals_megatron_vocab_parallel_cross_entropy(megatron_world):
    for rank, result in enumerate(megatron_world):
        ours, theirs = result["ce"]
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6, msg=lambda m: f"rank {rank}: {m}")


def test_cp2_pp2_only_last_stage_counts(megatron_world):
    logits, labels, mask = make_batch(23, BATCH, SEQ, VOCAB)
    _, ref_acc = reference(logits, labels, mask, VOCAB)
    ref_metrics = ref_acc.compute()
    for rank, result in enumerate(megatron_world):
        g = result["b_groups"]
        # order tp-cp-ep-dp-pp: CP pairs (0,1), (2,3); stage 1 = ranks 2, 3.
        assert g["tp"] is None and g["cp"] == (rank % 2, 2)
        assert g["reduce"] == [rank - rank % 2, rank - rank % 2 + 1]
        assert g["last"] == (rank >= 2)
        if g["last"]:
            assert result["b_split_is_megatron"]
            assert_state_match(result["b_state"], ref_acc.state, f"rank {rank}")
        else:
            assert not result["b_state"].any(), "a stage without logits accumulated"
        # Broadcast from the last rank: every rank ends with the same metrics.
        assert_metrics_match(result["b_metrics"], ref_metrics, f"rank {rank}")


def test_tp2_pp2_last_stage_tp_pair(megatron_world):
    logits, labels, mask = make_batch(24, BATCH, SEQ, VOCAB, PADDED)
    _, ref_acc = reference(logits, labels, mask, VOCAB)
    for rank, result in enumerate(megatron_world):
        g = result["c_groups"]
        assert g["tp"] == [rank - rank % 2, rank - rank % 2 + 1] and g["reduce"] is None
        assert g["last"] == (rank >= 2)
        if g["last"]:
            assert_state_match(result["c_state"], ref_acc.state, f"rank {rank}")
            assert_metrics_match(result["c_metrics"], ref_acc.compute(), f"rank {rank}")
        else:
            assert result["c_metrics"] is None  # Megatron logs from the last rank


def test_vocab_shards_equal_megatron_vocab_ranges(megatron_core):
    from megatron.core.tensor_parallel.utils import VocabUtility

    from megatron_hesnr.metric.vocab import padded_vocab_size, vocab_shard

    for vocab, tp, div in ((997, 2, 8), (151643, 8, 128), (300, 4, 128), (50, 3, 1)):
        padded = padded_vocab_size(vocab, tp, div)
        covered = 0
        for r in range(tp):
            shard = vocab_shard(r, padded // tp, vocab)
            assert (shard.start, shard.end) == tuple(VocabUtility.vocab_range_from_global_vocab_size(padded, r, tp))
            covered += shard.real_size
        assert covered == vocab  # every real id on exactly one rank, no padding id counted


def test_metric_layer_never_imports_megatron():
    """The metric core (``megatron_hesnr/metric/``) and the CP split never import Megatron: only the front
    ends read its globals (the runtime check above makes the getters raise; this one covers code paths
    it did not run)."""
    import ast
    from pathlib import Path

    pkg = Path(mh.__file__).parent
    modules = sorted((pkg / "metric").rglob("*.py")) + [pkg / "evaluation" / "context_parallel.py"]
    names = {m.stem for m in modules}
    assert {"shard_stats", "token_stats", "tp_merge", "vocab", "accumulator", "reduction", "context_parallel",
            "rank_agreement", "state_check"} <= names
    for module in modules:
        name = module.relative_to(pkg)
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(m.split(".")[0] == "megatron" for m in mods), f"{name} imports {mods}"
