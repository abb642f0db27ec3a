"""Start-up checks and entry wiring found by the source audit (issue 12, defects 4-8)."""
from __future__ import annotations

import argparse
import sys
import types

import pytest
from conftest import CHECKOUT_GPT_BASE

pytest.importorskip("megatron.core")

from megatron_hesnr.megatron_lm.args import add_hesnr_args, validate_hesnr_args  # noqa: E402
from megatron_hesnr.evaluation.config import HESNRConfigError  # noqa: E402

CHECKOUT_GPT = '''
has_nvidia_modelopt = True
class ModelOptModelConfig:
    pass
def add_modelopt_args(parser):
    parser.add_argument("--modelopt-enabled", action="store_true")
    return parser
def maybe_enable_modelopt(args):
    args.modelopt_seen = True
''' + CHECKOUT_GPT_BASE


def megatron_args(*argv, **over):
    """A namespace as Megatron's parser would give it (the fields the checks read) + our flags."""
    ns = add_hesnr_args(argparse.ArgumentParser()).parse_args(list(argv))
    base = dict(seq_length=64, eval_interval=10, eval_iters=2, skip_train=False, mtp_num_layers=None,
                context_parallel_size=1, pipeline_model_parallel_size=1, hybrid_context_parallel=False,
                microbatch_group_size_per_vp_stage=None)
    base.update(over)
    for k, v in base.items():
        setattr(ns, k, v)
    return ns


ON = ("--hesnr-data-path", "swe=/data/swe")


def test_hybrid_context_parallel_refused():
    with pytest.raises(HESNRConfigError, match=r"^--hybrid-context-parallel: "):
        validate_hesnr_args(megatron_args(*ON, hybrid_context_parallel=True))


def test_microbatch_group_larger_than_pp_refused():
    with pytest.raises(HESNRConfigError, match=r"^--microbatch-group-size-per-virtual-pipeline-stage: 3 > "):
        validate_hesnr_args(megatron_args(*ON, pipeline_model_parallel_size=2, microbatch_group_size_per_vp_stage=3))
    assert validate_hesnr_args(megatron_args(*ON, pipeline_model_parallel_size=2,
                                             microbatch_group_size_per_vp_stage=2)) is not None


def test_output_processor_checked_against_the_model_class(monkeypatch):
    """--hesnr-logits-capture output_processor with the hybrid entry fails at start-up, naming the class."""
    from megatron_hesnr.evaluation import capture
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    class WithProc:
        def forward(self, input_ids, position_ids, attention_mask, labels=None, *, output_processor=None):
            pass

    class WithoutProc:
        def forward(self, input_ids, position_ids, attention_mask, labels=None):
            pass

    classes = {"gpt": WithProc, "hybrid": WithoutProc}
    monkeypatch.setattr(capture, "model_class", lambda family="gpt": classes[family])
    for capture in ("output_processor", "chunked"):
        args = megatron_args(*ON, "--hesnr-logits-capture", capture)
        assert MegatronHESNRHook(model_family="gpt").validate(args) is not None
        with pytest.raises(HESNRConfigError,
                           match=rf"^--hesnr-logits-capture: {capture}: .*HybridModel\.forward takes no output_processor"):
            MegatronHESNRHook(model_family="hybrid").validate(args)


def test_forward_step_takes_the_partial_checkpoint_argument():
    """Megatron calls forward_step(it, model, checkpoint_activations_microbatch) with
    --num-microbatches-with-partial-activation-checkpoints."""
    import inspect

    from megatron_hesnr.evaluation.eval_pass import HESNRPass

    params = inspect.signature(HESNRPass._forward_step).parameters
    assert "checkpoint_activations_microbatch" in params and len(params) == 4


def test_mtp_heads_skipped_when_the_model_allows():
    import torch

    from megatron_hesnr.evaluation.capture import LogitsCapture

    seen = {}

    class Model(torch.nn.Module):
        def forward(self, tokens, position_ids, attention_mask, labels=None, *, compute_mtp_loss=True,
                    output_processor=None):
            seen["compute_mtp_loss"] = compute_mtp_loss
            return torch.zeros(2, 3)

    for strategy in ("output_processor", "labels_none"):
        seen.clear()
        LogitsCapture(strategy)(Model(), None, None, None, None)
        assert seen == {"compute_mtp_loss": False}, strategy


# ---------------------------------------------------------------- entry wiring
def _fake_training(monkeypatch, pretrain, parsed=None, validate_calls=None):
    training = types.ModuleType("megatron.training")
    training.pretrain = pretrain
    training.inprocess_restart = types.SimpleNamespace(maybe_wrap_for_inprocess_restart=lambda f: (f, "STORE"))
    sub = types.ModuleType("megatron.training.training")
    init = types.ModuleType("megatron.training.initialize")
    init.validate_args = lambda args, defaults=None: (validate_calls or []).append(args)
    arguments = types.ModuleType("megatron.training.arguments")
    argument_utils = types.ModuleType("megatron.training.argument_utils")
    arguments.parse_and_validate_args = lambda extra_args_provider=None, args_defaults=None: parsed
    argument_utils.pretrain_cfg_container_from_args = lambda args, model_cfg=None: ("container", model_cfg)
    argument_utils.gpt_config_from_args = lambda args, model_config_cls=None: ("gpt-config", model_config_cls)
    for name, mod in (("megatron.training", training), ("megatron.training.training", sub),
                      ("megatron.training.initialize", init), ("megatron.training.arguments", arguments),
                      ("megatron.training.argument_utils", argument_utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    return init


def test_old_style_flags_checked_right_after_megatron_validate_args(checkout, monkeypatch):
    """core <= 0.17: a wrong flag stops the job in initialize_megatron, before any model or dataset."""
    from megatron_hesnr.megatron_lm.entry import run_megatron_entry

    events = []

    def pretrain(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
                 process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
                 get_embedding_ranks=None, non_loss_data_func=None, store=None):
        # what Megatron's initialize_megatron does: parse, then validate_args, then the rest
        args = megatron_args(*ON, "--hesnr-eval-interval", "15")
        sys.modules["megatron.training.initialize"].validate_args(args, args_defaults)
        events.append("model built")
        train_valid_test_dataset_provider([1, 1, 1])

    _fake_training(monkeypatch, pretrain)
    with pytest.raises(HESNRConfigError, match=r"^--hesnr-eval-interval: 15 must be a multiple of --eval-interval 10"):
        run_megatron_entry("pretrain_gpt")
    assert events == []


def test_container_style_enables_modelopt_like_the_checkout(checkout, monkeypatch):
    """core >= 0.19: maybe_enable_modelopt(args) runs and ModelOptModelConfig is the model config class."""
    from megatron_hesnr.megatron_lm.entry import run_megatron_entry

    got = {}

    def pretrain(cfg_container, train_valid_test_dataset_provider, model_type, forward_step_func,
                 model_provider=None, process_non_loss_data_func=None, get_embedding_ranks=None,
                 non_loss_data_func=None, store=None):
        got.update(locals())

    parsed = megatron_args(modelopt_enabled=True)
    _fake_training(monkeypatch, pretrain, parsed=parsed)
    run_megatron_entry("pretrain_gpt")
    import pretrain_gpt

    assert getattr(parsed, "modelopt_seen", False)
    assert got["cfg_container"] == ("container", ("gpt-config", pretrain_gpt.ModelOptModelConfig))
    parsed.modelopt_enabled = False
    parsed.modelopt_seen = False
    run_megatron_entry("pretrain_gpt")
    assert got["cfg_container"] == ("container", ("gpt-config", None))
