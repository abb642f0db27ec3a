"""The ``--hesnr-*`` command-line flags: an extra-args provider for Megatron's parser.

``add_hesnr_args(parser)`` is what Megatron calls ``extra_args_provider``;
``config_from_args(args)`` turns the parsed namespace into :class:`HESNRConfig`
(``None`` when no ``--hesnr-data-path`` is given, i.e. the hook is off), and
``validate_hesnr_args(args)`` also checks the combination with Megatron's own flags.
"""
from __future__ import annotations

import argparse

from ..defaults import DEFAULT_CATEGORY_NAMES, DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD
from .buckets import DEFAULT_LENGTH_MULTIPLE, MAX_BUCKETS
from .config import IMPLS, LOGITS_CAPTURES, LONG_POLICIES, HESNRConfig, HESNRConfigError, parse_data_specs

#: (flag, dest) of every flag this module adds; the README table is built from it.
FLAGS = (
    "--hesnr-data-path", "--hesnr-eval-interval", "--hesnr-eval-iters", "--hesnr-micro-batch-size",
    "--hesnr-num-microbatches", "--hesnr-k", "--hesnr-threshold", "--hesnr-num-bins", "--hesnr-impl",
    "--hesnr-category-names", "--hesnr-report-categories", "--hesnr-jsonl", "--hesnr-long-policy",
    "--hesnr-window-stride", "--hesnr-logits-capture", "--hesnr-run-name", "--hesnr-keep-empty-windows",
    "--hesnr-length-multiple", "--hesnr-max-buckets", "--hesnr-pad-to-seq-length",
)


def add_hesnr_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the HE-SNR flags (Megatron's ``extra_args_provider`` contract: returns the parser)."""
    g = parser.add_argument_group(title="HE-SNR evaluation (megatron-hesnr)")
    g.add_argument("--hesnr-data-path", nargs="+", default=None, metavar="[NAME=]PREFIX",
                   help="Prepared trajectory sets (hesnr prepare output prefixes); NAME=PREFIX names a "
                        "set, a bare PREFIX is named by its basename. Off when not given.")
    g.add_argument("--hesnr-eval-interval", type=int, default=None,
                   help="Evaluate HE-SNR every N iterations (a multiple of --eval-interval; default: "
                        "at every Megatron evaluation).")
    g.add_argument("--hesnr-eval-iters", type=int, default=None,
                   help="Global batches per set and evaluation (default: a full pass over every window).")
    g.add_argument("--hesnr-micro-batch-size", type=int, default=1, help="Windows per micro-batch.")
    g.add_argument("--hesnr-num-microbatches", type=int, default=None,
                   help="Micro-batches per data-parallel rank and step (default: max(4, pipeline size); more per step means fewer schedule calls and a smaller pipeline bubble).")
    g.add_argument("--hesnr-k", type=int, default=DEFAULT_K, help="Top-k candidate set size.")
    g.add_argument("--hesnr-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="High-entropy threshold on H_k (default (ln 3 + ln 4) / 2).")
    g.add_argument("--hesnr-num-bins", type=int, default=DEFAULT_NUM_BINS, help="H_k histogram bins on [0, ln k].")
    g.add_argument("--hesnr-impl", choices=IMPLS, default="auto",
                   help="Statistics implementation: fused Triton kernel on CUDA (auto) or the PyTorch reference.")
    g.add_argument("--hesnr-category-names", nargs="+", default=list(DEFAULT_CATEGORY_NAMES),
                   help="Names of scoring-mask categories 1, 2, ... of the prepared data.")
    g.add_argument("--hesnr-report-categories", nargs="+", default=["action"],
                   help="Categories logged besides the overall result ('all').")
    g.add_argument("--hesnr-jsonl", default=None, metavar="PATH",
                   help="Append one JSON record per evaluation and set (also under --skip-train).")
    g.add_argument("--hesnr-long-policy", choices=LONG_POLICIES, default="window",
                   help="Trajectories longer than --seq-length: truncate, or sliding windows that score "
                        "every target once with as much context as fits.")
    g.add_argument("--hesnr-window-stride", type=int, default=None,
                   help="New targets per sliding window (default --seq-length / 2; smaller = more context, more compute).")
    g.add_argument("--hesnr-logits-capture", choices=LOGITS_CAPTURES, default="auto",
                   help="How logits are taken: output_processor (core >= 0.19), labels_none "
                        "(forward(labels=None)), output_layer_hook (forward hook on output_layer).")
    g.add_argument("--hesnr-run-name", default=None, help="Run name written into the JSONL records.")
    g.add_argument("--hesnr-keep-empty-windows", action="store_true",
                   help="Also run windows that score no token (normally skipped).")
    g.add_argument("--hesnr-length-multiple", type=int, default=DEFAULT_LENGTH_MULTIPLE,
                   help="Windows are grouped into a few length buckets and each bucket runs at its own "
                        "sequence length, a multiple of this (and of 2 x CP, and of TP with sequence "
                        "parallelism), or --seq-length itself.")
    g.add_argument("--hesnr-max-buckets", type=int, default=MAX_BUCKETS,
                   help="Most distinct sequence lengths per set (fewer shapes for CUDA graphs / TE plans, "
                        "more padding); the planner uses as few as keep positions fed <= 1.05x the real inputs.")
    g.add_argument("--hesnr-pad-to-seq-length", action="store_true",
                   help="Pad every window to --seq-length instead (slower; for comparison).")
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
    return HESNRConfig(
        datasets=parse_data_specs(paths),
        eval_interval=args.hesnr_eval_interval,
        eval_iters=args.hesnr_eval_iters,
        micro_batch_size=args.hesnr_micro_batch_size,
        num_microbatches=args.hesnr_num_microbatches,
        k=args.hesnr_k,
        threshold=args.hesnr_threshold,
        num_bins=args.hesnr_num_bins,
        impl=args.hesnr_impl,
        category_names=tuple(args.hesnr_category_names),
        report_categories=tuple(args.hesnr_report_categories),
        jsonl=args.hesnr_jsonl,
        long_policy=args.hesnr_long_policy,
        window_stride=args.hesnr_window_stride,
        logits_capture=args.hesnr_logits_capture,
        run_name=args.hesnr_run_name,
        skip_empty_windows=not args.hesnr_keep_empty_windows,
        length_multiple=args.hesnr_length_multiple,
        max_buckets=args.hesnr_max_buckets,
        pad_to_seq_length=args.hesnr_pad_to_seq_length,
    )


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
    cfg.check_against(
        seq_length=getattr(args, "seq_length", None),
        eval_interval=getattr(args, "eval_interval", None),
        eval_iters=eval_iters,
        skip_train=bool(getattr(args, "skip_train", False)),
        mtp=bool(getattr(args, "mtp_num_layers", None)),
        has_output_processor=has_output_processor,
        model_name=model_name,
    )
    if getattr(args, "context_parallel_size", 1) > 1:
        seq = args.seq_length
        cp2 = 2 * args.context_parallel_size
        if seq % cp2:
            raise HESNRConfigError("--seq-length", f"{seq} must be divisible by 2 x --context-parallel-size = {cp2}")
    return cfg
