"""Entry points that reuse a Megatron-LM checkout's ``pretrain_gpt`` / ``pretrain_hybrid``.

``run_megatron_entry("pretrain_gpt")`` imports that module from the checkout (its
``__main__`` block does not run), takes its dataset provider, forward step, model
provider + builder and embedding ranks, adds the ``--hesnr-*`` flags and the hook,
and calls ``pretrain()`` through :func:`.compat.call_pretrain`, so the same script
works from core 0.13 to 0.19+.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from functools import partial

from .args import add_hesnr_args, chain_extra_args_providers
from .compat import call_pretrain, pretrain_style
from .hook import MegatronHESNRHook

log = logging.getLogger(__name__)

#: entry module -> (fallback modules, builder attribute, model-config function in argument_utils)
ENTRIES = {
    "pretrain_gpt": ((), "gpt_builder", "gpt_config_from_args"),
    # pretrain_hybrid.py appeared in Megatron-LM 0.18; before it the same model was pretrain_mamba.py.
    "pretrain_hybrid": (("pretrain_mamba",), "hybrid_builder", "hybrid_config_from_args"),
}
#: entry module -> model family (the class the start-up checks look at, see evaluation.capture.MODEL_CLASSES)
FAMILIES = {"pretrain_gpt": "gpt", "pretrain_hybrid": "hybrid"}


def add_checkout_to_path(checkout: str | None = None) -> str:
    """Put the Megatron-LM checkout (``$MEGATRON_LM_DIR`` or the working directory) first on ``sys.path``."""
    checkout = os.path.abspath(checkout or os.environ.get("MEGATRON_LM_DIR") or os.getcwd())
    if not os.path.isfile(os.path.join(checkout, "pretrain_gpt.py")):
        raise SystemExit(f"{checkout} is not a Megatron-LM checkout (no pretrain_gpt.py): "
                         "run from the checkout or set MEGATRON_LM_DIR")
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    return checkout


def _import_entry(name: str):
    fallbacks, _, _ = ENTRIES[name]
    for candidate in (name, *fallbacks):
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if exc.name != candidate:
                raise
    raise SystemExit(f"this Megatron-LM checkout has none of {[name, *fallbacks]}")


def _model_config_fn(mod, model_cfg_name: str):
    """``gpt_config_from_args`` / ``hybrid_config_from_args``, with the checkout's
    ``ModelOptModelConfig`` when ``--modelopt-enabled`` is on (as its ``__main__`` does)."""
    base = getattr(importlib.import_module("megatron.training.argument_utils"), model_cfg_name)
    modelopt_cls = getattr(mod, "ModelOptModelConfig", None) if getattr(mod, "has_nvidia_modelopt", False) else None

    def model_config_from_args(args):
        if modelopt_cls is not None and getattr(args, "modelopt_enabled", False):
            return base(args, model_config_cls=modelopt_cls)
        return base(args)

    return model_config_from_args


def run_megatron_entry(name: str, checkout: str | None = None):
    program_start = time.time()
    add_checkout_to_path(checkout)
    mod = _import_entry(name)
    from megatron.core.enums import ModelType
    from megatron.training import inprocess_restart, pretrain

    _, builder_attr, model_cfg_name = ENTRIES[name]
    builder = next((getattr(mod, a) for a in (builder_attr, "mamba_builder") if hasattr(mod, a)), None)
    model_provider = getattr(mod, "model_provider", None)
    if model_provider is not None and builder is not None:
        model_provider = partial(model_provider, builder)

    setter = getattr(importlib.import_module("megatron.training.training"), "set_startup_timestamps", None)
    if setter is not None:
        setter(program_start=program_start, main_entry=time.time())

    hook = MegatronHESNRHook(model_family=FAMILIES[name])
    dataset_provider = mod.train_valid_test_datasets_provider
    dataset_provider.is_distributed = True
    modelopt = getattr(mod, "add_modelopt_args", None) if getattr(mod, "has_nvidia_modelopt", False) else None
    pretrain, store = inprocess_restart.maybe_wrap_for_inprocess_restart(pretrain)

    style = pretrain_style(pretrain)
    model_config_from_args = None
    if style == "container_model_cfg":
        model_config_from_args = _model_config_fn(mod, model_cfg_name)
        model_provider = None  # 0.19+ builds the model from the model config

    def after_args_parsed(args):
        hook.validate(args)
        # The checkout's own __main__ (0.19+) enables ModelOpt here; <= 0.18 do it in model_provider.
        if style != "args" and modelopt is not None and hasattr(mod, "maybe_enable_modelopt"):
            mod.maybe_enable_modelopt(args)

    return call_pretrain(
        pretrain,
        train_valid_test_dataset_provider=hook.wrap_dataset_provider(dataset_provider),
        model_type=ModelType.encoder_or_decoder,
        forward_step_func=mod.forward_step,
        model_provider=model_provider,
        extra_args_provider=chain_extra_args_providers(modelopt, add_hesnr_args),
        args_defaults={"tokenizer_type": "GPT2BPETokenizer"},
        model_config_from_args=model_config_from_args,
        after_args_parsed=after_args_parsed,
        get_embedding_ranks=getattr(mod, "get_embedding_ranks", None),
        store=store,
        non_loss_data_func=hook.non_loss_data_func,
        process_non_loss_data_func=hook.process_non_loss_data_func,
    )
