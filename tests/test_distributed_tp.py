"""Vocabulary-parallel statistics over gloo ranks equal one device holding all logits.

One 4-rank world runs every tensor-parallel check (sizes 1-4, padded vocabularies,
a shard made only of padding, bytes on the wire, mismatched ranks); the tests
below assert on what it returned.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import megatron_hesnr as mh
from megatron_hesnr.metric.tp_merge import HEADER_SIZE
from megatron_hesnr.metric.vocab import padded_vocab_size, vocab_shard

from distributed_harness import (
    assert_metrics_match,
    assert_state_match,
    assert_stats_match,
    contiguous_partition,
    make_batch,
    new_groups,
    reference,
    run_world,
    stats_dict,
    tp_slice,
)

WORLD = 4
K = mh.DEFAULT_K
# (tp_size, true vocab, make-vocab-size-divisible-by): padded widths 1000, 1008,
# 1008, 1024, 1024 (no padding) and 512 for 300 (TP rank 3 holds only padding).
TP_CASES = [(1, 997, 8), (2, 997, 8), (3, 997, 8), (4, 997, 8), (4, 1024, 8), (4, 300, 128), (3, 50, 1)]
BATCH, SEQ = 2, 24

# Collectives a rank could use to send data; the byte test wraps all of them.
_SENDING = {
    "all_gather": 1, "all_gather_into_tensor": 1, "all_reduce": 0, "broadcast": 0, "reduce": 0,
    "reduce_scatter": None, "reduce_scatter_tensor": 1, "all_to_all": None, "all_to_all_single": 1,
    "gather": 0, "scatter": None, "send": 0, "isend": 0, "all_gather_object": None,
    "broadcast_object_list": None, "gather_object": None, "scatter_object_list": None,
}


def _case_seed(i: int) -> int:
    return 100 + i


def _tp_checks(rank: int, world: int):
    out = {"cases": [], "bytes": None, "errors": {}}
    for i, (tp, vocab, div) in enumerate(TP_CASES):
        padded = padded_vocab_size(vocab, tp, div)
        logits, labels, mask = make_batch(_case_seed(i), BATCH, SEQ, vocab, padded)
        group, ranks = new_groups(contiguous_partition(world, tp), rank)
        tp_rank, tp_size = ranks.index(rank), len(ranks)
        shard = tp_slice(logits, tp_rank, tp_size)
        stats = mh.token_stats(shard, labels, k=K, vocab_size=vocab, tp_group=group, impl="torch")
        acc = mh.HESNRAccumulator(k=K)
        acc.update(stats, mask)
        out["cases"].append({"case": i, "tp_size": tp_size, "stats": stats_dict(stats),
                             "state": acc.state.clone(), "metrics": acc.compute()})

    # bf16 logits in Megatron's memory layout: [b, s, V/TP] as a transposed view of
    # an [s, b, V/TP] buffer (no 2-D view of it exists without reordering dims).
    group2, ranks2 = new_groups(contiguous_partition(world, 2), rank)
    logits, labels, mask = make_batch(_case_seed(99), BATCH, SEQ, 997, 1008)
    sbv = tp_slice(logits, ranks2.index(rank), 2).to(torch.bfloat16).transpose(0, 1).contiguous()
    stats = mh.token_stats(sbv.transpose(0, 1), labels, vocab_size=997, tp_group=group2, impl="torch")
    out["bf16"] = stats_dict(stats)
    # No tokens at all (an empty micro-batch) still takes part in the collective.
    empty = mh.token_stats(torch.zeros(0, 504), torch.zeros(0, dtype=torch.long), vocab_size=997,
                           tp_group=group2, impl="torch")
    out["empty_shape"] = tuple(empty.valid.shape)

    # Bytes each rank sends, TP=4, at two token counts: every collective is counted.
    group, _ = new_groups([list(range(world))], rank)
    sent: list[tuple[str, int]] = []
    originals = {}
    for name, arg in _SENDING.items():
        fn = getattr(dist, name, None)
        if fn is None:
            continue
        originals[name] = fn

        def wrapper(*a, __fn=fn, __name=name, __arg=arg, **kw):
            t = a[__arg] if __arg is not None and len(a) > __arg else None
            sent.append((__name, t.numel() * t.element_size() if isinstance(t, torch.Tensor) else -1))
            return __fn(*a, **kw)

        setattr(dist, name, wrapper)
    try:
        per_n = {}
        for seq in (8, 40):
            logits, labels, _ = make_batch(7, BATCH, seq, 1000, 1024)
            sent.clear()
            mh.token_stats(tp_slice(logits, rank, world), labels, k=K, vocab_size=1000, tp_group=group, impl="torch")
            per_n[BATCH * seq] = list(sent)
        out["bytes"] = per_n
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)

    # Ranks that were handed different batches must fail loudly, on every rank.
    logits, labels, _ = make_batch(8, BATCH, 8, 1000, 1024)
    bad = labels.clone()
    if rank == 2:
        bad[1, 3] = (bad[1, 3] + 1) % 1000
    try:
        mh.token_stats(tp_slice(logits, rank, world), bad, k=K, vocab_size=1000, tp_group=group, impl="torch")
    except ValueError as e:
        out["errors"]["labels"] = str(e)
    cut = 6 if rank == 1 else 8  # rank 1 holds fewer tokens
    try:
        mh.token_stats(tp_slice(logits[:, :cut], rank, world), labels[:, :cut], k=K, vocab_size=1000,
                       tp_group=group, impl="torch")
    except ValueError as e:
        out["errors"]["tokens"] = str(e)
    return out


@pytest.fixture(scope="module")
def tp_world(tmp_path_factory):
    return run_world(_tp_checks, WORLD, tmp_path_factory.mktemp("tp"))


@pytest.mark.parametrize("case", range(len(TP_CASES)), ids=[f"tp{t}-v{v}-div{d}" for t, v, d in TP_CASES])
def test_tp_matches_single_device(tp_world, case):
    tp, vocab, div = TP_CASES[case]
    padded = padded_vocab_size(vocab, tp, div)
    logits, labels, mask = make_batch(_case_seed(case), BATCH, SEQ, vocab, padded)
    ref_stats, ref_acc = reference(logits, labels, mask, vocab)
    assert ref_acc.sums()["num_high_entropy"] > 0, "test data must exercise the high-entropy set"
    assert ref_acc.sums()["num_invalid"] > 0, "test data must contain unscorable labels"
    seen_sizes = set()
    for rank, result in enumerate(tp_world):
        got = result["cases"][case]
        seen_sizes.add(got["tp_size"])
        assert_stats_match(got["stats"], ref_stats, f"rank {rank} tp={got['tp_size']}")
        assert_state_match(got["state"], ref_acc.state, f"rank {rank} tp={got['tp_size']}")
        assert_metrics_match(got["metrics"], ref_acc.compute(), f"rank {rank} tp={got['tp_size']}")
    assert tp in seen_sizes


def test_tp2_bf16_transposed_layout(tp_world):
    logits, labels, mask = make_batch(_case_seed(99), BATCH, SEQ, 997, 1008)
    ref_stats, _ = reference(logits.to(torch.bfloat16), labels, mask, 997)
    for rank, result in enumerate(tp_world):
        assert_stats_match(result["bf16"], ref_stats, f"rank {rank} bf16")
        assert result["empty_shape"] == (0,)


def test_padding_only_shard_case_really_has_one():
    tp, vocab, div = TP_CASES[5]
    padded = padded_vocab_size(vocab, tp, div)
    assert vocab_shard(tp - 1, padded // tp, vocab).real_size == 0


def test_header_then_one_record_collective_of_3_plus_k_values_per_token(tp_world):
    width = 4 * (3 + K)  # fp32 bytes of one token's record
    for rank, result in enumerate(tp_world):
        calls = result["bytes"]
        (n1, c1), (n2, c2) = sorted(calls.items())
        for n, c in ((n1, c1), (n2, c2)):
            assert len(c) == 2, f"rank {rank}: expected the header and the records, got {c}"
            assert all(name in ("all_gather", "all_gather_into_tensor") for name, _ in c)
            assert c[0][1] == 8 * HEADER_SIZE  # int64 header: per call, not per token
            assert c[1][1] == width * n
        # The per-token cost is exactly 3 + k fp32 values.
        assert (c2[1][1] - c1[1][1]) / (n2 - n1) == width
        # ... and a tiny fraction of the logits shard (1024 / 4 columns per token).
        assert c2[1][1] / n2 < 0.25 * 4 * 1024 / 4


def test_mismatched_tp_ranks_raise_on_every_rank(tp_world):
    for rank, result in enumerate(tp_world):
        assert "labels_checksum" in result["errors"].get("labels", ""), f"rank {rank}: {result['errors']}"
        assert "tokens" in result["errors"].get("tokens", ""), f"rank {rank}: {result['errors']}"


def test_padded_vocab_size_matches_megatron_rule():
    assert padded_vocab_size(997, 1, 8) == 1000
    assert padded_vocab_size(997, 3, 8) == 1008
    assert padded_vocab_size(151643, 8, 128) == 152576
    assert padded_vocab_size(1024, 4, 8) == 1024
    with pytest.raises(ValueError, match="tp_size"):
        padded_vocab_size(10, 0)
