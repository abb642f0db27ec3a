"""Ranks that disagree fail the same way on every rank, within seconds (issue 16, cases 3 and 4).

Each scenario runs in its own 2-rank gloo world: rank 1 is handed something
different from rank 0 (an accumulator config, a token count, one label...).
Every rank must raise ``RanksDisagree`` with the same message, quickly, and the
world must stay usable (a barrier after the error).  Before the fix these
reduced silently, SIGABRTed one rank (buffers of different sizes) or raised on
one rank only while the other waited.
"""
from __future__ import annotations

import time

import pytest
import torch

import megatron_hesnr as mh

from distributed_harness import make_batch, run_world, tp_slice

WORLD = 2
TIMEOUT = 60.0  # per world; a hang fails the test instead of CI
FAST = 10.0     # seconds from the call to the error, on every rank (2 loaded cores)


def _acc_kwargs(rank: int, what: str) -> dict:
    kw = {"k": 10, "threshold": 0.5, "num_bins": 50, "category_names": ("action", "thought")}
    if rank == 1:
        kw.update({
            "threshold": {"threshold": 0.75},
            "k": {"k": 12},
            "category_names": {"category_names": ("action", "observation")},
            "num_bins": {"num_bins": 40},
            "num_categories": {"category_names": ("action",)},
        }.get(what, {}))
    return kw


def _accumulator_case(rank: int, world: int, what: str):
    import torch.distributed as dist

    acc = mh.HESNRAccumulator(**_acc_kwargs(rank, what))
    logits, labels, mask = make_batch(3 + rank, 2, 16, 300)
    acc.update(mh.token_stats(logits, labels, k=acc.config.k, impl="torch"), mask.clamp_max(acc.config.num_categories))
    if what == "reduced" and rank == 1:
        acc.all_reduce(None)  # this rank already reduced (alone): a second sum would double count
    t0 = time.monotonic()
    try:
        acc.all_reduce(dist.group.WORLD)
        result = ("no error", "", time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001 - the test compares what every rank raised
        result = (type(exc).__name__, str(exc), time.monotonic() - t0)
    dist.barrier()  # still usable: nobody is stuck in a collective
    return result


def _tp_case(rank: int, world: int, what: str):
    import torch.distributed as dist

    vocab = 1000
    logits, labels, _ = make_batch(8, 2, 8, vocab)
    k = 12 if (what == "k" and rank == 1) else 10
    vocab_size = 999 if (what == "vocab_size" and rank == 1) else vocab
    if what == "tokens" and rank == 1:
        logits, labels = logits[:, :6], labels[:, :6]
    if what == "labels" and rank == 1:
        labels = labels.clone()
        labels[0, 0] += 2  # compensating edits: the old position-weighted sum did not see them
        labels[0, 1] -= 1
    shard = tp_slice(logits, rank, world)
    if what == "slices":
        # No 2-D view of these logits: handled slice by slice; rank 1 has one more row.
        rows = 2 + rank
        big, _, _ = make_batch(9, 3, 9, vocab)
        shard = tp_slice(big, rank, world)[:rows, :8]
        labels = make_batch(9, 3, 9, vocab)[1][:rows, :8]
    if what == "dtype" and rank == 1:
        shard = shard.double()
    t0 = time.monotonic()
    try:
        mh.token_stats(shard, labels, k=k, vocab_size=vocab_size, tp_group=dist.group.WORLD, impl="torch")
        result = ("no error", "", time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001
        result = (type(exc).__name__, str(exc), time.monotonic() - t0)
    dist.barrier()
    return result


def _assert_same_error_everywhere(results, field: str) -> None:
    kinds = {r[0] for r in results}
    assert kinds == {"RanksDisagree"}, f"per-rank outcomes: {results}"
    assert len({r[1] for r in results}) == 1, "every rank must raise the same message"
    assert field in results[0][1], results[0][1]
    assert all(r[2] < FAST for r in results), [r[2] for r in results]


@pytest.mark.parametrize("what,field", [
    ("threshold", "threshold"), ("k", "k"), ("category_names", "category_names"),
    ("num_bins", "num_bins"), ("num_categories", "state_size"), ("reduced", "reduced"),
])
def test_accumulator_all_reduce_refuses_disagreeing_ranks(tmp_path, what, field):
    results = run_world(_accumulator_case, WORLD, tmp_path, what, timeout=TIMEOUT)
    _assert_same_error_everywhere(results, field)


@pytest.mark.parametrize("what,field", [
    ("k", "k"), ("tokens", "tokens"), ("labels", "labels_checksum"), ("vocab_size", "vocab_size"),
    ("dtype", "record_dtype"), ("slices", "tokens"),
])
def test_tp_merge_refuses_disagreeing_ranks(tmp_path, what, field):
    results = run_world(_tp_case, WORLD, tmp_path, what, timeout=TIMEOUT)
    _assert_same_error_everywhere(results, field)


def _agreeing(rank: int, world: int):
    import torch.distributed as dist

    logits, labels, mask = make_batch(5, 2, 16, 300)
    stats = mh.token_stats(tp_slice(logits, rank, world), labels, tp_group=dist.group.WORLD, impl="torch")
    acc = mh.HESNRAccumulator()
    acc.update(stats, mask)
    acc.all_reduce(dist.group.WORLD)
    return acc.state.clone()


def test_agreeing_ranks_still_reduce(tmp_path):
    logits, labels, mask = make_batch(5, 2, 16, 300)
    ref = mh.HESNRAccumulator()
    ref.update(mh.token_stats(logits, labels, impl="torch"), mask)
    for state in run_world(_agreeing, WORLD, tmp_path, timeout=TIMEOUT):
        torch.testing.assert_close(state, 2 * ref.state, rtol=1e-6, atol=1e-6)
