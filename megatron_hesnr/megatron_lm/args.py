"""The ``--hesnr-*`` flags under Megatron-LM's parser.

``add_hesnr_args`` (from :mod:`megatron_hesnr.evaluation.flags`) is Megatron's
``extra_args_provider``; :func:`chain_extra_args_providers` joins it to a script's own;
:func:`validate_hesnr_args` builds the config and checks it against Megatron's own flags.
"""
from __future__ import annotations

from ..evaluation.config import HESNRConfig, HESNRConfigError, HostSettings
from ..evaluation.flags import FLAGS, add_hesnr_args, config_from_args, dest_of

__all__ = ["FLAGS", "add_hesnr_args", "chain_extra_args_providers", "config_from_args", "dest_of",
           "validate_hesnr_args"]

def chain_extra_args_providers(*providers):
    """One provider calling each given provider (``None`` entries are skipped) in turn."""
    providers = [p for p in providers if p is not None]

    def provider(parser):
        for p in providers:
            parser = p(parser) or parser
        return parser

    return provider


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
