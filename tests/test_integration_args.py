"""The --hesnr-* flags: parsing, defaults, and refusals that name the flag."""
from __future__ import annotations

import argparse
import math

import pytest

from megatron_hesnr.metric.defaults import DEFAULT_THRESHOLD
from megatron_hesnr.megatron_lm.args import (FLAGS, add_hesnr_args, chain_extra_args_providers, config_from_args,
                                             validate_hesnr_args)
from megatron_hesnr.evaluation.config import HESNRConfigError


def _megatron_like_parser():
    """The Megatron flags the checks read, with Megatron's defaults."""
    p = argparse.ArgumentParser()
    p.add_argument("--seq-length", type=int, default=None)
    p.add_argument("--eval-interval", type=int, default=1000)
    p.add_argument("--eval-iters", type=int, default=100)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--context-parallel-size", type=int, default=1)
    p.add_argument("--mtp-num-layers", type=int, default=None)
    return add_hesnr_args(p)


def parse(cmd: str):
    return _megatron_like_parser().parse_args(cmd.split())


def test_off_by_default():
    assert config_from_args(parse("--seq-length 128")) is None
    assert validate_hesnr_args(parse("--seq-length 128")) is None


def test_defaults_and_names():
    cfg = validate_hesnr_args(parse("--seq-length 128 --hesnr-data-path swe=/d/swe /d/other_set"))
    assert [(d.name, d.prefix) for d in cfg.datasets] == [("swe", "/d/swe"), ("other_set", "/d/other_set")]
    assert cfg.metric.k == 10 and cfg.metric.threshold == DEFAULT_THRESHOLD and cfg.long_policy == "window"
    assert cfg.eval_interval is None and cfg.eval_iters is None and cfg.stride_for(128) == 64
    assert cfg.report_categories == ("action",)


def test_docs_flag_table_is_the_configs():
    """docs/megatron-lm.md's table lists exactly the config's flags, row for row as :func:`flag_table` writes them."""
    from conftest import REPO
    from megatron_hesnr.evaluation.config import flag_table

    readme = [line for line in (REPO / "docs" / "megatron-lm.md").read_text(encoding="utf-8").splitlines()
              if line.startswith("| `--hesnr-")]
    assert readme == flag_table()
    assert len(readme) == len(FLAGS) == 22


def test_flags_map_back_to_their_fields():
    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import HESNRConfig, field_for_flag, flag_of, flag_settings

    assert field_for_flag("--hesnr-data-path") == "datasets" and field_for_flag("--hesnr-k") == "metric.k"
    assert field_for_flag("--hesnr-keep-empty-windows") == "skip_empty_windows"
    assert field_for_flag("model.seq_length") is None and flag_of("metric.num_documents") is None
    cfg = config_from_args(parse("--seq-length 128 --hesnr-data-path /x --hesnr-keep-empty-windows --hesnr-k 7 "
                                 "--hesnr-threshold 1.5 --hesnr-category-names a b --hesnr-report-categories b"))
    assert cfg.skip_empty_windows is False
    assert cfg.metric == AccumulatorConfig(k=7, threshold=1.5, category_names=("a", "b"))
    assert cfg.report_categories == ("b",)
    # Every field has its flag, the metric's own fields (but the per-set num_documents) included.
    metric = {f"metric.{f}" for f in AccumulatorConfig.__dataclass_fields__} - {"metric.num_documents"}
    assert len(flag_settings()) == len(FLAGS) and {s.field for s in flag_settings()} == (
        set(HESNRConfig.__dataclass_fields__) - {"metric"} | metric)
    assert [flag_of(s.field) for s in flag_settings()] == list(FLAGS)


@pytest.mark.parametrize("cmd, field", [
    ("--hesnr-k 1", "k"), ("--hesnr-k 3 --hesnr-threshold 1.2", "threshold"), ("--hesnr-num-bins 0", "num_bins"),
    ("--hesnr-category-names a all", "category_names")])
def test_a_bad_metric_flag_is_refused_once_by_the_metric_config(cmd, field):
    """AccumulatorConfig alone checks the metric flags; the refusal names the flag and the field,
    carries AccumulatorConfig's own message and chains no second error."""
    from megatron_hesnr.metric.accumulator import AccumulatorConfig, AccumulatorConfigError

    args = parse("--seq-length 128 --hesnr-data-path /x " + cmd)
    with pytest.raises(AccumulatorConfigError) as direct:
        AccumulatorConfig(**{f: getattr(args, f"hesnr_{f}") for f in ("k", "threshold", "num_bins", "category_names")})
    with pytest.raises(HESNRConfigError) as e:
        config_from_args(args)
    flag = "--hesnr-" + field.replace("_", "-")
    assert (e.value.flag, e.value.field, e.value.message) == (flag, f"metric.{field}", direct.value.message)
    assert str(e.value) == f"{flag}: {direct.value.message}"
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_metric_mapping_is_checked_like_the_object():
    """``metric`` also takes a mapping of AccumulatorConfig's fields; unknown keys and a preset
    ``num_documents`` (each pass sets its own) are refused by name."""
    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import HESNRConfig

    assert HESNRConfig(metric={"k": 8, "threshold": 1.0}).metric == AccumulatorConfig(k=8, threshold=1.0)
    with pytest.raises(HESNRConfigError, match=r"^metric: unknown \['kk'\]") as e:
        HESNRConfig(metric={"kk": 8})
    assert e.value.flag is None and e.value.field == "metric"
    with pytest.raises(HESNRConfigError, match=r"^metric\.num_documents: is set for each set by the evaluation pass"):
        HESNRConfig(metric=AccumulatorConfig(num_documents=3))
    with pytest.raises(HESNRConfigError, match=r"^metric: must be an AccumulatorConfig"):
        HESNRConfig(metric=10)


def test_every_flag_is_registered():
    p = _megatron_like_parser()
    known = {s for a in p._actions for s in a.option_strings}
    assert set(FLAGS) <= known


@pytest.mark.parametrize("cmd, flag", [
    ("--hesnr-data-path a=/x a=/y", "--hesnr-data-path"),
    ("--hesnr-data-path /x/a /y/a", "--hesnr-data-path"),
    ("--hesnr-data-path bad!name=/x", "--hesnr-data-path"),
    ("--hesnr-data-path a=", "--hesnr-data-path"),
    ("--hesnr-data-path /x --hesnr-k 1", "--hesnr-k"),
    ("--hesnr-data-path /x --hesnr-threshold 2.5", "--hesnr-threshold"),
    ("--hesnr-data-path /x --hesnr-k 3 --hesnr-threshold 1.2", "--hesnr-threshold"),
    ("--hesnr-data-path /x --hesnr-num-bins 0", "--hesnr-num-bins"),
    ("--hesnr-data-path /x --hesnr-eval-iters 0", "--hesnr-eval-iters"),
    ("--hesnr-data-path /x --hesnr-eval-interval 0", "--hesnr-eval-interval"),
    ("--hesnr-data-path /x --hesnr-eval-interval 1500", "--hesnr-eval-interval"),
    ("--hesnr-data-path /x --hesnr-report-categories action code", "--hesnr-report-categories"),
    ("--hesnr-data-path /x --hesnr-category-names a a", "--hesnr-category-names"),
    ("--hesnr-data-path /x --hesnr-long-policy truncate --hesnr-window-stride 8", "--hesnr-window-stride"),
    ("--hesnr-data-path /x --hesnr-window-stride 200", "--hesnr-window-stride"),
    ("--hesnr-data-path /x --hesnr-micro-batch-size 0", "--hesnr-micro-batch-size"),
    ("--hesnr-data-path /x --eval-iters 0", "--eval-iters"),
    ("--hesnr-data-path /x --eval-interval 0", "--eval-interval"),
    ("--hesnr-data-path /x --seq-length 1", "--seq-length"),
    ("--hesnr-data-path /x --context-parallel-size 3", "--seq-length"),
    ("--hesnr-data-path /x --hesnr-logits-capture output_processor", "--hesnr-logits-capture"),
    ("--hesnr-data-path /x --mtp-num-layers 1 --hesnr-logits-capture labels_none", "--hesnr-logits-capture"),
    ("--hesnr-jsonl /tmp/x.jsonl", "--hesnr-jsonl"),
])
def test_refusals_name_the_flag(cmd, flag):
    args = parse("--seq-length 128 " + cmd)
    with pytest.raises(HESNRConfigError) as e:
        validate_hesnr_args(args)
    assert str(e.value).startswith(flag + ":"), str(e.value)
    assert e.value.flag == flag


def test_valid_combinations():
    ok = [
        "--hesnr-eval-interval 3000",
        "--hesnr-eval-iters 4 --hesnr-k 5 --hesnr-threshold 1.0 --hesnr-num-bins 100 --hesnr-impl torch",
        "--hesnr-long-policy truncate",
        "--hesnr-window-stride 128",
        "--skip-train --eval-interval 7 --hesnr-eval-interval 5",  # intervals do not matter without training
        "--context-parallel-size 4",
        "--mtp-num-layers 1",
        "--hesnr-report-categories all action thought --hesnr-jsonl /tmp/r.jsonl",
    ]
    for cmd in ok:
        cfg = validate_hesnr_args(parse("--seq-length 128 --hesnr-data-path /x " + cmd))
        assert cfg is not None and 0 < cfg.metric.threshold < math.log(cfg.metric.k)


def test_argparse_rejects_unknown_choices():
    with pytest.raises(SystemExit):
        parse("--hesnr-data-path /x --hesnr-impl cuda")


def test_chained_providers_keep_existing_flags():
    def other(parser):
        parser.add_argument("--other-flag", type=int, default=3)
        return parser

    p = chain_extra_args_providers(other, None, add_hesnr_args)(argparse.ArgumentParser())
    a = p.parse_args(["--other-flag", "4", "--hesnr-k", "7"])
    assert a.other_flag == 4 and a.hesnr_k == 7
