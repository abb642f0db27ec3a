"""The accumulator's per-trajectory table: update by doc_ids, merge, JSON, bad input;
and the same sums under DP=2, CP=2 and TP=2 (gloo) as in one process."""
from __future__ import annotations

import json

import pytest
import torch

import megatron_hesnr as mh
from megatron_hesnr.metric.accumulator import SCALAR_FIELDS
from megatron_hesnr.evaluation import reduce_metrics

from distributed_harness import assert_metrics_match, assert_state_match, layout_token_stats, make_batch, run_layouts
from stderr_synth import as_token_stats, clustered_tokens

N_DOCS = 40


def _data(seed=0, n_docs=N_DOCS):
    tok = clustered_tokens(n_docs, seed, mean_len=30)
    n = len(tok["doc"])
    mask = torch.ones(n, dtype=torch.long)
    mask[::7] = 2
    return as_token_stats(tok), mask, torch.tensor(tok["doc"])


def test_table_rows_sum_to_the_overall_sums_and_per_trajectory_values_are_right():
    stats, mask, doc = _data()
    acc = mh.HESNRAccumulator(num_documents=N_DOCS)
    acc.update(stats, mask, doc)
    torch.testing.assert_close(acc.trajectories.sum(0), acc.scalars, rtol=1e-12, atol=1e-9)
    # Trajectory 3 alone, in an untracked accumulator.
    one = mh.HESNRAccumulator()
    sel = doc == 3
    one.update(stats.map(lambda x: x[sel]), mask[sel])
    torch.testing.assert_close(acc.trajectories[3], one.scalars, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.trajectory_rows("action"), acc.trajectories[:, 0])
    m = acc.compute()
    assert m["num_documents"] == N_DOCS and m["hesnr_stderr"] > 0
    assert set(m["by_category"]) == {"action", "thought"}
    assert m["by_category"]["thought"]["num_documents"] <= N_DOCS


def test_untracked_accumulator_reports_no_stderr():
    stats, mask, _ = _data()
    acc = mh.HESNRAccumulator()
    acc.update(stats, mask)
    m = acc.compute()
    assert m["num_documents"] is None and "hesnr_stderr" not in m
    assert "trajectories" not in acc.state_dict()


def test_split_updates_merge_and_json_round_trip_equal_one_update():
    stats, mask, doc = _data(1)
    whole = mh.HESNRAccumulator(num_documents=N_DOCS)
    whole.update(stats, mask, doc)
    # Tokens of one trajectory land in both halves (a cut inside it).
    cut = len(doc) // 2
    a, b = (mh.HESNRAccumulator(num_documents=N_DOCS) for _ in range(2))
    a.update(stats.map(lambda x: x[:cut]), mask[:cut], doc[:cut])
    b.update(stats.map(lambda x: x[cut:]), mask[cut:], doc[cut:])
    assert int(doc[cut - 1]) == int(doc[cut])
    back = mh.HESNRAccumulator.from_state_dict(json.loads(json.dumps(b.state_dict())))
    a.merge(back)
    torch.testing.assert_close(a.state, whole.state, rtol=1e-12, atol=1e-9)
    assert a.compute()["hesnr_stderr"] == pytest.approx(whole.compute()["hesnr_stderr"], rel=1e-9)
    d = whole.state_dict()["trajectories"]
    assert d["fields"] == list(SCALAR_FIELDS) and d["num_documents"] == N_DOCS
    assert set(d["by_category"]) == {"action", "thought"}          # empty categories are not written
    assert all(isinstance(v, int) for v in d["by_category"]["action"]["num_tokens"])


def test_merge_refuses_a_different_number_of_trajectories():
    with pytest.raises(ValueError, match="different configs"):
        mh.HESNRAccumulator(num_documents=3).merge(mh.HESNRAccumulator(num_documents=4))
    with pytest.raises(ValueError, match="different configs"):
        mh.HESNRAccumulator(num_documents=3).merge(mh.HESNRAccumulator())


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "7"])
def test_bad_num_documents(value):
    with pytest.raises((ValueError, TypeError), match="num_documents"):
        mh.HESNRAccumulator(num_documents=value)


def test_bad_doc_ids_are_refused_with_the_reason():
    stats, mask, doc = _data()
    acc = mh.HESNRAccumulator(num_documents=N_DOCS)
    with pytest.raises(ValueError, match="tracks 40 trajectories: pass doc_ids"):
        acc.update(stats, mask)
    with pytest.raises(ValueError, match="keeps no per-trajectory sums"):
        mh.HESNRAccumulator().update(stats, mask, doc)
    with pytest.raises(TypeError, match="integer trajectory indices"):
        acc.update(stats, mask, doc.double())
    with pytest.raises(ValueError, match="doc_ids shape"):
        acc.update(stats, mask, doc[:-1])
    with pytest.raises(ValueError, match=r"trajectory index 40, outside \[0, num_documents = 40\)"):
        acc.update(stats, mask, torch.where(doc == 0, 40, doc))
    bad = doc.clone()
    bad[5] = -1
    with pytest.raises(ValueError, match="1 scored token"):
        acc.update(stats, mask, bad)
    assert not acc.state.any()                                       # nothing half-added
    # A negative index on an unscored token (padding) is fine.
    mask0 = mask.clone()
    mask0[5] = 0
    acc.update(stats, mask0, bad)
    assert acc.scalars[:, 0].sum() == len(doc) - 1


def test_load_state_dict_refuses_a_broken_table():
    stats, mask, doc = _data()
    acc = mh.HESNRAccumulator(num_documents=N_DOCS)
    acc.update(stats, mask, doc)
    good = acc.state_dict()

    def broken(edit):
        d = json.loads(json.dumps(good))
        edit(d)
        return d

    cases = {
        "missing trajectories": lambda d: d.pop("trajectories"),
        "must be an object": lambda d: d.update(trajectories=[]),
        "num_tokens does not add up": lambda d: d["trajectories"]["by_category"]["action"]["num_tokens"].append(
            d["trajectories"]["by_category"]["action"]["num_tokens"].pop() + 1),
        "fractional counts": lambda d: d["trajectories"]["by_category"]["action"]["num_top1"].append(0.5)
        or d["trajectories"]["by_category"]["action"]["num_top1"].pop(0),
        "num_documents": lambda d: d["trajectories"].update(num_documents=3),
        "unknown categories": lambda d: d["trajectories"]["by_category"].update(tool={}),
        "exactly the fields": lambda d: d["trajectories"]["by_category"]["action"].pop("sum_nll"),
        r"has shape \(39,\)": lambda d: d["trajectories"]["by_category"]["action"]["sum_nll"].pop(),
        "not a list of numbers": lambda d: d["trajectories"]["by_category"]["action"].update(sum_nll="x"),
    }
    for msg, edit in cases.items():
        with pytest.raises(ValueError, match=msg):
            mh.HESNRAccumulator.from_state_dict(broken(edit))


# ------------------------------------------------------------------ gloo world
WORLD, VOCAB, PADDED, BATCH, SEQ, DOCS = 4, 997, 1008, 4, 32, 5
LAYOUTS = {
    # name: (tp partition, cp partition, reduce partition, dp index of rank)
    "dp2": ([[0], [1], [2], [3]], [[0], [1], [2], [3]], [[0, 1], [2, 3]], lambda r: r % 2),
    "cp2": ([[0], [1], [2], [3]], [[0, 1], [2, 3]], [[0, 1], [2, 3]], lambda r: 0),
    "tp2": ([[0, 1], [2, 3]], [[0], [1], [2], [3]], [[0], [1], [2], [3]], lambda r: 0),
    "tp2xdp2": ([[0, 1], [2, 3]], [[0], [1], [2], [3]], [[0, 2], [1, 3]], lambda r: r // 2),
}


def _doc_ids(mask):
    """Packed windows: a trajectory every 20 tokens of the flattened batch, so each one
    spans rows (DP ranks) and both halves of a row (CP ranks); -1 on unscored tokens."""
    doc = (torch.arange(mask.numel()) // 20 % DOCS).view(mask.shape)
    return torch.where(mask > 0, doc, -1)


def _reference():
    logits, labels, mask = make_batch(23, BATCH, SEQ, VOCAB, PADDED)
    acc = mh.HESNRAccumulator(num_documents=DOCS)
    acc.update(mh.token_stats(logits[..., :VOCAB].contiguous(), labels, impl="torch"), mask, _doc_ids(mask))
    return acc


def _layout_sums(rank, layout, logits, labels, mask, doc):
    groups, _, local, stats = layout_token_stats(layout, rank, VOCAB, logits, labels, mask, doc)
    acc = mh.HESNRAccumulator(num_documents=DOCS)
    acc.update(stats, local[2], local[3])
    local_docs = sorted(set(local[3][local[2] > 0].tolist()))
    metrics = reduce_metrics(acc, groups)  # reduces the state in place: clone it after
    return {"state": acc.state.clone(), "metrics": metrics, "docs": local_docs}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    logits, labels, mask = make_batch(23, BATCH, SEQ, VOCAB, PADDED)
    return run_layouts(LAYOUTS, _layout_sums, WORLD, tmp_path_factory.mktemp("trajectory_sums"),
                       logits, labels, mask, _doc_ids(mask))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_per_trajectory_sums_match_one_process(world, layout):
    ref = _reference()
    ref_metrics = ref.compute()
    assert ref_metrics["num_documents"] == DOCS
    for rank, result in enumerate(world):
        got = result[layout]
        assert_state_match(got["state"], ref.state, f"{layout} rank {rank}")   # the table is in the state
        assert_metrics_match(got["metrics"], ref_metrics, f"{layout} rank {rank}")
    if layout in ("dp2", "cp2"):
        # Trajectories really were split: every rank saw part of most of them.
        assert all(len(r[layout]["docs"]) >= DOCS - 1 for r in world)
