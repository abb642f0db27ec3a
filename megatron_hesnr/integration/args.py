"""The ``--hesnr-*`` command-line flags: an extra-args provider for Megatron's parser.

``add_hesnr_args(parser)`` is what Megatron calls ``extra_args_provider``;
``config_from_args(args)`` turns the parsed namespace into :class:`HESNRConfig`
(``None`` when no ``--hesnr-data-path`` is given, i.e. the hook is off), and
``validate_hesnr_args(args)`` also checks the combination with Megatron's own flags.
"""
from __future__ import annotations

import argparse

from .config import HESNRConfig, HESNRConfigError, HostSettings, flag_fields, inverted, parse_data_specs

#: Every flag this module adds, in the order of the config's fields.
FLAGS = tuple(f.metadata["flag"] for f in flag_fields())


def add_hesnr_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the HE-SNR flags (Megatron's ``extra_args_provider`` contract: returns the parser)."""
    g = parser.add_argument_group(title="HE-SNR evaluation (megatron-hesnr)")
    for f in flag_fields():
        kw = {"default": list(f.default) if isinstance(f.default, tuple) else f.default, **f.metadata["argparse"]}
        g.add_argument(f.metadata["flag"], help=f.metadata["help"], **kw)
    return parser


def chain_extra_args_providers(*providers):
    """One provider calling each given provider (``None`` entries are skipped) in turn."""
    providers = [p for p in providers if p is not None]

    def provider(parser):
        for p in providers:
            parser = p(parser) or parser
        return parser

    return provider


def config_from_args(args) -> HESNRConfig | None:
    """The config of a parsed namespace, or ``None`` when ``--hesnr-data-path`` is absent."""
    paths = getattr(args, "hesnr_data_path", None)
    if not paths:
        if getattr(args, "hesnr_jsonl", None):
            raise HESNRConfigError("--hesnr-jsonl", "given without --hesnr-data-path (nothing would be evaluated)")
        return None
    values = {}
    for f in flag_fields():
        value = getattr(args, dest_of(f.metadata["flag"]))
        if f.name == "datasets":
            value = parse_data_specs(value)
        elif inverted(f):
            value = not value
        elif isinstance(f.default, tuple):
            value = tuple(value)
        values[f.name] = value
    return HESNRConfig(**values)


def dest_of(flag: str) -> str:
    """argparse's attribute for ``flag`` (``--hesnr-k`` -> ``hesnr_k``)."""
    return flag.lstrip("-").replace("-", "_")


def validate_hesnr_args(args, *, has_output_processor: bool = False, model_name: str = "GPTModel") -> HESNRConfig | None:
    """Config from ``args`` checked against Megatron's flags in the same namespace."""
    cfg = config_from_args(args)
    if cfg is None:
        return None
    # Layouts whose schedule or batch shape the evaluation pass does not produce.
    if getattr(args, "hybrid_context_parallel", False):
        raise HESNRConfigError("--hybrid-context-parallel", "HE-SNR evaluation supports the standard context-parallel "
                               "split only (hybrid CP uses another schedule and packed batches)")
    group = getattr(args, "microbatch_group_size_per_vp_stage", None)
    pp = getattr(args, "pipeline_model_parallel_size", 1) or 1
    if group is not None and group > pp:
        raise HESNRConfigError("--microbatch-group-size-per-virtual-pipeline-stage",
                               f"{group} > --pipeline-model-parallel-size {pp}: HE-SNR steps are whole rounds of PP "
                               "micro-batches; leave it at the default (PP)")
    eval_iters = getattr(args, "eval_iters", None)
    if isinstance(eval_iters, (list, tuple)):  # --multiple-validation-sets
        eval_iters = max(eval_iters) if eval_iters else 0
    if getattr(args, "full_validation", False):
        eval_iters = eval_iters or 1
    cfg.check_against(HostSettings(
        seq_length=getattr(args, "seq_length", None),
        eval_interval=getattr(args, "eval_interval", None),
        eval_iters=eval_iters,
        skip_train=bool(getattr(args, "skip_train", False)),
        mtp=bool(getattr(args, "mtp_num_layers", None)),
        context_parallel_size=getattr(args, "context_parallel_size", 1) or 1,
        has_output_processor=has_output_processor,
        model_name=model_name,
    ))
    return cfg
