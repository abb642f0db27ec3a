"""Accumulator states: what update, load_state_dict and merge refuse (issue 16, case 5),
and the property that a corrupted saved state is either rejected or round-trips exactly."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import megatron_hesnr as mh
from megatron_hesnr.metric.accumulator import SCALAR_FIELDS

from distributed_harness import make_batch


def _filled(seed: int = 0, k: int = 10, num_bins: int = 512) -> mh.HESNRAccumulator:
    logits, labels, mask = make_batch(seed, 2, 32, 300)
    acc = mh.HESNRAccumulator(k=k, num_bins=num_bins)
    acc.update(mh.token_stats(logits, labels, k=k, impl="torch"), mask)
    return acc


def _saved(num_bins: int = 512) -> dict:
    return json.loads(json.dumps(_filled(num_bins=num_bins).state_dict()))


def test_update_refuses_stats_of_another_k():
    logits, labels, mask = make_batch(0, 2, 16, 300)
    for other_k in (5, 20):
        stats = mh.token_stats(logits, labels, k=other_k, impl="torch")
        with pytest.raises(ValueError, match=f"k={other_k}"):
            mh.HESNRAccumulator(k=10).update(stats, mask)


def test_update_refuses_hand_built_stats_above_ln_k():
    logits, labels, mask = make_batch(0, 2, 16, 300)
    stats = mh.token_stats(logits, labels, k=20, impl="torch")
    stats.k = None  # e.g. built by hand: only the values can tell
    with pytest.raises(ValueError, match="ln k"):
        mh.HESNRAccumulator(k=10).update(stats, mask)


def _set_scalar(d: dict, name: str, value, cat: int = 0) -> dict:
    d = copy.deepcopy(d)
    d["scalars"][cat][SCALAR_FIELDS.index(name)] = value
    return d


@pytest.mark.parametrize("corrupt,match", [
    (lambda d: _set_scalar(d, "num_high_entropy", d["scalars"][0][0] + 1), "num_high_entropy"),
    (lambda d: _set_scalar(d, "num_tokens", d["scalars"][0][0] + 0.5), "fractional"),
    (lambda d: _set_scalar(d, "num_invalid", -1.0), "negative"),
    (lambda d: _set_scalar(d, "sum_nll", float("nan")), "non-finite"),
    (lambda d: {**d, "config": {**d["config"], "category_names": "action"}}, "category_names"),
    (lambda d: {**d, "config": {**d["config"], "k": 10.0}}, "config.k"),
    (lambda d: {**d, "version": True}, "version"),
    (lambda d: {**d, "reduced": "no"}, "reduced"),
    (lambda d: {**d, "scalars": [[True] * len(SCALAR_FIELDS)] * len(d["scalars"])}, "number"),
    (lambda d: {**d, "extra": 1}, "unknown extra"),
    (lambda d: {k: v for k, v in d.items() if k != "reduced"}, "missing reduced"),
])
def test_load_state_dict_refuses_corrupt_states(corrupt, match):
    d = corrupt(_saved())
    with pytest.raises(ValueError, match=match):
        mh.HESNRAccumulator.from_state_dict(d)
    with pytest.raises(ValueError, match=match):
        mh.HESNRAccumulator().load_state_dict(d)


def test_merging_a_reduced_state_into_an_unreduced_one_is_refused():
    local, reduced = _filled(0), _filled(1).all_reduce(None)
    with pytest.raises(ValueError, match="reduced"):
        local.merge(reduced)
    with pytest.raises(ValueError, match="reduced"):
        reduced.merge(local)
    # Two reduced results (e.g. two evaluation runs) add up and stay reduced.
    both = _filled(1).all_reduce(None).merge(_filled(2).all_reduce(None))
    assert both.state_dict()["reduced"] is True
    with pytest.raises(RuntimeError, match="twice"):
        both.all_reduce(None)


def test_merge_checks_the_merged_in_sums():
    bad = _filled(1)
    bad.scalars[0, SCALAR_FIELDS.index("num_high_entropy")] += 1e6
    with pytest.raises(ValueError, match="num_high_entropy"):
        _filled(0).merge(bad)


# ------------------------------------------------------------ property test
_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=3), inner, max_size=2), max_leaves=4)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _corrupt(d: dict, data) -> dict:
    d = copy.deepcopy(d)
    paths = [p for p in _paths(d) if p]
    path = data.draw(st.sampled_from(paths), label="path")
    parent = d
    for key in path[:-1]:
        parent = parent[key]
    key, old = path[-1], parent[path[-1]]
    op = data.draw(st.sampled_from(["replace", "delete", "nudge", "add", "append"]), label="op")
    if op == "replace":
        parent[key] = data.draw(_JSON, label="value")
    elif op == "delete":
        del parent[key]
    elif op == "nudge" and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[key] = old + data.draw(st.sampled_from([1, -1, 0.5, 1e-9, -1e-9, 1e300]), label="delta")
    elif op == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=4), label="new key")] = data.draw(_JSON, label="value")
    elif op == "append" and isinstance(old, list):
        old.append(data.draw(_JSON, label="value"))
    else:
        parent[key] = data.draw(_JSON, label="value")
    return d


def _canonical(d):
    """Tables compared as floats (an integral 3 loads and saves as 3.0); all else exactly,
    through JSON text so that 10 != 10.0 and True != 1."""
    d = copy.deepcopy(d)
    for name in ("scalars", "hist"):
        d[name] = json.loads(json.dumps(d[name]), parse_int=float)
    return json.dumps(d, sort_keys=True)


_BASE = _saved(num_bins=8)  # small: every leaf is a candidate path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_states_are_rejected_or_round_trip_exactly(data):
    d = _corrupt(_BASE, data)
    try:
        acc = mh.HESNRAccumulator.from_state_dict(d)
    except ValueError:
        return  # rejected (StateError is a ValueError); anything else is a bug
    assert _canonical(acc.state_dict()) == _canonical(d)
    # ... and what loaded is a usable state: its metrics compute without raising.
    acc.compute()
    assert torch.isfinite(acc.state).all()
