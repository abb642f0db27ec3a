"""The example entry points wire a Megatron-LM checkout's pieces into pretrain() (fake checkout)."""
from __future__ import annotations

import sys
import types

import pytest
from conftest import CHECKOUT_GPT_BASE

pytest.importorskip("megatron.core")

CHECKOUT_GPT = CHECKOUT_GPT_BASE + '''
def get_embedding_ranks(pp_ranks):
    return pp_ranks[:1]
'''


def _fake_training(monkeypatch, pretrain):
    training = types.ModuleType("megatron.training")
    training.pretrain = pretrain
    training.inprocess_restart = types.SimpleNamespace(maybe_wrap_for_inprocess_restart=lambda f: (f, "STORE"))
    sub = types.ModuleType("megatron.training.training")
    arguments = types.ModuleType("megatron.training.arguments")
    argument_utils = types.ModuleType("megatron.training.argument_utils")
    parsed = types.SimpleNamespace(seq_length=64, eval_interval=10, eval_iters=2, skip_train=False,
                                   hesnr_data_path=None, hesnr_jsonl=None)
    arguments.parse_and_validate_args = lambda extra_args_provider=None, args_defaults=None: parsed
    argument_utils.pretrain_cfg_container_from_args = lambda args, model_cfg=None: ("container", model_cfg)
    argument_utils.gpt_config_from_args = lambda args: "gpt-model-config"
    for name, mod in (("megatron.training", training), ("megatron.training.training", sub),
                      ("megatron.training.arguments", arguments), ("megatron.training.argument_utils", argument_utils)):
        monkeypatch.setitem(sys.modules, name, mod)


def test_old_style_pretrain(checkout, monkeypatch):
    from megatron_hesnr.megatron_lm.entry import run_megatron_entry

    got = {}

    def pretrain(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
                 process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
                 get_embedding_ranks=None, get_position_embedding_ranks=None, non_loss_data_func=None, store=None,
                 inprocess_call_wrapper=None):
        got.update(locals())

    _fake_training(monkeypatch, pretrain)
    run_megatron_entry("pretrain_gpt")
    import pretrain_gpt

    assert got["model_provider"]() == pretrain_gpt.gpt_builder  # partial(model_provider, gpt_builder)
    assert got["forward_step_func"] is pretrain_gpt.forward_step
    assert got["get_embedding_ranks"] is pretrain_gpt.get_embedding_ranks and got["store"] == "STORE"
    assert got["train_valid_test_dataset_provider"].is_distributed
    hook = got["non_loss_data_func"].__self__
    assert got["process_non_loss_data_func"].__self__ is hook
    parser = got["extra_args_provider"](__import__("argparse").ArgumentParser())
    assert parser.parse_args(["--hesnr-k", "5"]).hesnr_k == 5
    assert got["args_defaults"] == {"tokenizer_type": "GPT2BPETokenizer"}


def test_container_style_pretrain(checkout, monkeypatch):
    from megatron_hesnr.megatron_lm.entry import run_megatron_entry

    got = {}

    def pretrain(cfg_container, train_valid_test_dataset_provider, model_type, forward_step_func,
                 model_provider=None, process_non_loss_data_func=None, get_embedding_ranks=None,
                 get_position_embedding_ranks=None, non_loss_data_func=None, store=None,
                 inprocess_call_wrapper=None, p2p_communicator=None, pg_collection=None,
                 skip_model_parallel_init=False):
        got.update(locals())

    _fake_training(monkeypatch, pretrain)
    run_megatron_entry("pretrain_gpt")
    assert got["cfg_container"] == ("container", "gpt-model-config")
    assert got["model_provider"] is None and got["non_loss_data_func"] is not None
    hook = got["non_loss_data_func"].__self__
    assert hook._validated and hook.config is None  # flags parsed and checked before pretrain()


def test_not_a_checkout(tmp_path, monkeypatch):
    from megatron_hesnr.megatron_lm.entry import run_megatron_entry

    monkeypatch.setenv("MEGATRON_LM_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="not a Megatron-LM checkout"):
        run_megatron_entry("pretrain_gpt")
