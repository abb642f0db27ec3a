"""The length-bucket planner (pure) and the plan the hook logs and records."""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_hesnr.evaluation.buckets import MAX_BUCKETS, ScheduleShape, alignment, plan_buckets


def _megatron_accepts(m, pp, group):
    """megatron-core's interleaved-schedule checks on the micro-batch count ``m``."""
    if group > m or group < pp:
        return False
    r = m % group
    return not (0 < r < pp)


@given(pp=st.integers(1, 6), extra=st.integers(0, 5), m=st.integers(1, 60))
def test_valid_count_is_the_least_count_the_interleaved_schedule_accepts(pp, extra, m):
    shape = ScheduleShape(pp_size=pp, vp_group=pp + extra)
    got = shape.valid_count(m)
    assert got >= m and _megatron_accepts(got, pp, pp + extra)
    assert not any(_megatron_accepts(c, pp, pp + extra) for c in range(m, got))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 200), dp=st.integers(1, 4), mbs=st.integers(1, 3), nmb=st.integers(1, 9),
       pp=st.integers(1, 4), interleaved=st.booleans())
def test_calls_feed_every_window_once(n, dp, mbs, nmb, pp, interleaved):
    shape = ScheduleShape(dp_size=dp, micro_batch_size=mbs, num_microbatches=nmb, pp_size=pp,
                          vp_group=pp if interleaved else None)
    fed = []
    for first, count, m in shape.calls(n):
        assert m == shape.valid_count(m) and count <= m * dp * mbs
        slots = sorted(shape.slot(j, r, b) for j in range(m) for r in range(dp) for b in range(mbs))
        assert slots == list(range(m * dp * mbs))  # each slot of a call once
        fed += [first + s for s in slots if s < count]  # the rest are empty samples
    assert sorted(fed) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 690), min_size=0, max_size=300), seq=st.integers(700, 900),
       multiple=st.sampled_from([1, 8, 128]), cp=st.sampled_from([1, 2, 3]), dp=st.integers(1, 3))
def test_every_window_in_one_bucket_that_holds_it(lengths, seq, multiple, cp, dp):
    seq -= seq % (2 * cp)
    a = alignment(multiple, cp_size=cp)
    plan = plan_buckets(lengths, seq, align=a, shape=ScheduleShape(dp_size=dp))
    placed = sorted(i for b in plan.buckets for i in b.windows)
    assert placed == list(range(len(lengths)))
    assert len(plan.buckets) <= MAX_BUCKETS
    for b in plan.buckets:
        assert b.length == seq or b.length % a == 0
        assert (cp == 1 or b.length % (2 * cp) == 0) and b.length <= seq
        assert all(lengths[i] <= b.length for i in b.windows)
    padded = plan_buckets(lengths, seq, align=a, shape=ScheduleShape(dp_size=dp), padded=True)
    assert plan.positions_fed <= padded.positions_fed
    assert plan.real_inputs == padded.real_inputs == sum(lengths)


def test_alignment_and_plan_summary():
    assert alignment(128, cp_size=3) == 384 and alignment(128, tp_size=3, sequence_parallel=True) == 384
    assert alignment(128, tp_size=3) == 128 and alignment(1, cp_size=2) == 4
    plan = plan_buckets([3, 5, 16, 16, 9], 16, align=4)
    s = plan.summary()
    assert s["lengths"] == [4, 8, 12, 16] and s["windows"] == [1, 1, 1, 2]  # few windows: one length each
    assert sum(s["windows"]) == 5 and s["real_inputs"] == 49 and s["positions_fed"] >= 49
    assert plan.describe().count("\n") == 0
    with pytest.raises(ValueError, match="seq_length=16"):
        plan_buckets([17], 16)
    with pytest.raises(ValueError, match="length multiple"):
        alignment(0)


def test_paper_like_set_meets_the_targets():
    """Positions fed <= 1.05x the real inputs, attention <= 1.2x the minimum (benchmark set)."""
    from megatron_hesnr.evaluation.windows import plan_windows

    sigma = np.sqrt(2 * np.log(23 / 17))
    rng = np.random.default_rng(0)
    lengths = np.round(17000 * np.exp(sigma * rng.standard_normal(500))).astype(int)
    for seq in (32768, 131072):
        n = [w.num_inputs for L in lengths for w in plan_windows(int(L), seq, "window", seq // 2)]
        s = plan_buckets(n, seq, align=128).summary()
        assert s["fed_over_real"] <= 1.05 and s["attention_over_min"] <= 1.2, (seq, s)
        # --hesnr-max-buckets 16: never more shapes, at the price of some padding.
        capped = plan_buckets(n, seq, align=128, max_buckets=16).summary()
        assert len(capped["lengths"]) <= 16 and capped["fed_over_real"] >= s["fed_over_real"], (seq, capped)


def test_length_multiple_flag():
    from megatron_hesnr.megatron_lm.args import add_hesnr_args, config_from_args
    from megatron_hesnr.evaluation.config import HESNRConfigError

    p = add_hesnr_args(argparse.ArgumentParser())
    cfg = config_from_args(p.parse_args(["--hesnr-data-path", "/d/x", "--hesnr-length-multiple", "64",
                                         "--hesnr-pad-to-seq-length"]))
    assert cfg.length_multiple == 64 and cfg.pad_to_seq_length
    assert config_from_args(p.parse_args(["--hesnr-data-path", "/d/x"])).length_multiple == 128
    with pytest.raises(HESNRConfigError, match="^--hesnr-length-multiple: must be an integer >= 1, got 0"):
        config_from_args(p.parse_args(["--hesnr-data-path", "/d/x", "--hesnr-length-multiple", "0"]))
    assert config_from_args(p.parse_args(["--hesnr-data-path", "/d/x"])).max_buckets == 32
    assert config_from_args(p.parse_args(["--hesnr-data-path", "/d/x", "--hesnr-max-buckets", "16"])).max_buckets == 16
    with pytest.raises(HESNRConfigError, match="^--hesnr-max-buckets: must be an integer >= 1, got 0"):
        config_from_args(p.parse_args(["--hesnr-data-path", "/d/x", "--hesnr-max-buckets", "0"]))


def test_hook_logs_and_records_the_plan(tmp_path, caplog):
    import torch

    from megatron_hesnr.evaluation.records import read_raw_records
    from test_integration_hook import Plain, _args, make_hook

    out = {}
    for pad in (False, True):
        d = tmp_path / str(pad)
        d.mkdir()
        hook = make_hook(d, _args(skip_train=True, iteration=3), length_multiple=2, pad_to_seq_length=pad)
        with caplog.at_level(logging.INFO, logger="megatron_hesnr.evaluation.evaluator"):
            caplog.clear()
            with torch.no_grad():
                hook.non_loss_data_func([Plain()])
        lines = [r.getMessage() for r in caplog.records if "schedule calls" in r.getMessage()]
        assert len(lines) == 2 and lines[0].startswith("HE-SNR set a: ")  # one line per set
        assert ("padded to --seq-length" in lines[0]) == pad
        out[pad] = read_raw_records(str(d / "r.jsonl"))
    for bucketed, padded in zip(out[False], out[True]):
        b, p = bucketed["config"]["buckets"], padded["config"]["buckets"]
        assert p["padded"] and p["lengths"] == [8] and not b["padded"]
        assert sum(b["windows"]) == p["windows"][0] == bucketed["config"]["data"]["num_windows"]
        assert b["positions_fed"] <= p["positions_fed"] and b["real_inputs"] == p["real_inputs"]
        assert bucketed["metrics"]["num_tokens"] == padded["metrics"]["num_tokens"] > 0
        assert bucketed["metrics"]["hesnr"] == pytest.approx(padded["metrics"]["hesnr"], rel=1e-6, nan_ok=True)


def test_explicit_attention_mask_is_one_causal_mask_per_bucket(tmp_path):
    """``create_attention_mask_in_dataloader``: a ``[1, 1, L, L]`` causal mask per bucket, shared."""
    import torch

    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.topology import Topology
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook
    import hesnr_integration_helpers as H
    from test_integration_hook import Plain, _args, small_dataset

    seen = []
    data = small_dataset(n=8)
    data.items = [(t[:n], m[:n]) for (t, m), n in zip(data.items * 2, (3, 4, 5, 5, 6, 9, 12, 20) * 2)]

    class Recording(Plain):
        def forward(self, input_ids, position_ids, attention_mask, labels=None):
            seen.append((input_ids.shape[1], attention_mask))
            return super().forward(input_ids, position_ids, attention_mask, labels)

    args = _args(skip_train=True, iteration=1, create_attention_mask_in_dataloader=True)
    hook = MegatronHESNRHook(HESNRConfig(datasets=(EvalDataset("a", "/d/a"),), impl="torch", length_multiple=2),
                             get_args=lambda: args, topology=Topology, forward_backward_func=H.forward_only,
                             open_dataset=lambda prefix: data, get_wandb_writer=lambda: None)
    with torch.no_grad():
        hook.non_loss_data_func([Recording()])
    lengths = hook._plans["a"].summary()["lengths"]
    assert len(set(lengths)) > 1
    masks = {}
    for L, mask in seen:
        assert mask.shape == (1, 1, L, L) and mask.dtype == torch.bool
        assert torch.equal(mask[0, 0], torch.ones(L, L, dtype=torch.bool).triu(1))  # True = masked out
        masks.setdefault(id(mask), L)
    assert sorted(masks.values()) == sorted(lengths)  # built once per bucket, not per micro-batch


def test_start_up_log_has_the_plan_the_pass_uses(tmp_path, caplog):
    """With Megatron's layout flags the plan is logged at set-up, and the evaluation uses that plan."""
    import torch

    from test_integration_hook import Plain, _args, make_hook

    args = _args(skip_train=True, iteration=3, data_parallel_size=1, pipeline_model_parallel_size=1,
                 tensor_model_parallel_size=1, context_parallel_size=1, sequence_parallel=False,
                 virtual_pipeline_model_parallel_size=None)
    hook = make_hook(tmp_path, args, length_multiple=2)
    with caplog.at_level(logging.INFO, logger="megatron_hesnr.evaluation.evaluator"):
        hook.setup()
        at_setup = [r.getMessage() for r in caplog.records if "schedule calls" in r.getMessage()]
        plans = dict(hook._plans)
        caplog.clear()
        with torch.no_grad():
            hook.non_loss_data_func([Plain()])
        again = [r.getMessage() for r in caplog.records if "schedule calls" in r.getMessage()]
    assert [m.split(":")[0] for m in at_setup] == ["HE-SNR set a", "HE-SNR set b"]
    assert again == [] and all(hook._plans[k] is plans[k] for k in plans)
