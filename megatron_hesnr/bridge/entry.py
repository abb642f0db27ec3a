"""A Megatron-Bridge recipe run with HE-SNR (what ``examples/bridge_pretrain_hesnr.py`` calls).

Command line: ``--recipe NAME`` (a function of ``megatron.bridge.recipes`` returning a
``ConfigContainer``, or ``package.module:function``), an optional ``--config-file`` of
YAML overrides, the same ``--hesnr-*`` flags as the Megatron-LM entry points, and
Bridge's Hydra-style ``section.field=value`` overrides for everything else, applied
the way Bridge's own example scripts apply them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal

from .compat import BridgeCompatError, bridge_symbol, container_get
from .config import add_hesnr_bridge_args, bridge_config_from_args

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "qwen3_30b_a3b_pretrain_config"


#: Top-level fields of Bridge's ``ConfigContainer`` (0.3 .. 0.7): what a ``section.field=value`` override starts with.
BRIDGE_SECTIONS = frozenset({
    "rng", "rerun_state_machine", "train", "model", "optimizer", "optimizer_config_override_provider", "ddp",
    "validation", "scheduler", "dataset", "logger", "tokenizer", "checkpoint", "dist", "ft", "straggler",
    "nvrx_straggler", "profiling", "peft", "comm_overlap", "mixed_precision", "tensor_inspect",
    "inprocess_restart", "env_vars",
})


def is_bridge_override(token: str) -> bool:
    """``validation.eval_interval=500``, ``+logger.x=1``, ``~peft``: not a ``--hesnr-*`` value.

    Checked before argparse, because ``--hesnr-data-path NAME=PREFIX ...`` takes several
    values and would otherwise swallow the overrides that follow it.  (So a set cannot
    be named after a section, e.g. ``model.v1=/data/x``.)
    """
    if token.startswith("-"):
        return False
    body = token.lstrip("+~")
    if body.split("=", 1)[0].split(".", 1)[0] not in BRIDGE_SECTIONS:
        return False
    return "=" in body or token.startswith("~")


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """(known arguments, Bridge overrides such as ``validation.eval_interval=500``)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if is_bridge_override(a)]
    argv = [a for a in argv if not is_bridge_override(a)]
    parser = argparse.ArgumentParser(description="Megatron-Bridge pre-/mid-training with HE-SNR at every evaluation",
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help="Recipe function in megatron.bridge.recipes (or package.module:function) "
                             f"returning a ConfigContainer (default {DEFAULT_RECIPE}).")
    parser.add_argument("--config-file", default=None, help="YAML file of ConfigContainer overrides.")
    add_hesnr_bridge_args(parser)
    args, stray = parser.parse_known_args(argv)
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)} (Bridge settings are given as section.field=value, "
                     f"section one of {sorted(BRIDGE_SECTIONS)})")
    return args, overrides


def load_recipe(name: str):
    """The ``ConfigContainer`` a recipe function returns."""
    if ":" in name:
        module, func = name.split(":", 1)
    else:
        module, func = "megatron.bridge.recipes", name
    try:
        recipe = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise BridgeCompatError(f"--recipe {name}: no recipe {module}.{func} in this megatron-bridge ({exc})") from exc
    return recipe()


def apply_overrides(cfg, overrides: list[str], config_file: str | None = None):
    """Bridge's own YAML + Hydra-style override path (``training.utils.omegaconf_utils``)."""
    if not overrides and not config_file:
        return cfg
    mod = "megatron.bridge.training.utils.omegaconf_utils"
    to_omegaconf = bridge_symbol(mod, "create_omegaconf_dict_config")
    parse_hydra = bridge_symbol(mod, "parse_hydra_overrides")
    apply = bridge_symbol(mod, "apply_overrides")
    from omegaconf import OmegaConf

    merged, excluded = to_omegaconf(cfg)
    if config_file:
        merged = OmegaConf.merge(merged, OmegaConf.load(config_file))
    if overrides:
        merged = parse_hydra(merged, overrides)
    apply(cfg, OmegaConf.to_container(merged, resolve=True), excluded)
    return cfg


def run_bridge_recipe(argv=None) -> None:
    args, overrides = parse_args(argv)
    hesnr = bridge_config_from_args(args)  # refuses a wrong --hesnr-* flag before anything starts
    cfg = apply_overrides(load_recipe(args.recipe), overrides, args.config_file)
    callbacks = []
    if hesnr is None:
        log.warning("no --hesnr-data-path: training without HE-SNR")
    else:
        hesnr.check_against_container(cfg)  # and a wrong combination with the recipe's settings
        from . import HESNRCallback

        callbacks.append(HESNRCallback(hesnr))
    if container_get(cfg, "train.exit_signal_handler"):
        # a save on the signal (NeMo-Run's PreemptionPlugin) needs the checkpoint writer's helper alive
        from .preemption import keep_checkpoint_writer_alive

        keep_checkpoint_writer_alive(container_get(cfg, "train.exit_signal") or signal.SIGTERM)
    forward_step = bridge_symbol("megatron.bridge.training.gpt_step", "forward_step")
    pretrain = bridge_symbol("megatron.bridge.training.pretrain", "pretrain")
    pretrain(config=cfg, forward_step_func=forward_step, callbacks=callbacks or None)

    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
