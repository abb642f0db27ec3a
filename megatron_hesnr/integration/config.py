"""What the HE-SNR evaluation hook does: one ``@dataclass(kw_only=True)`` config.

The config is filled from the ``--hesnr-*`` flags (see :mod:`.args`), but it is plain
data so that other front ends (NeMo / Megatron-Bridge) can build it directly.
Every check names the flag it comes from, so a refusal at start-up points at the
command line the user wrote.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..defaults import DEFAULT_CATEGORY_NAMES, DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD
from ..token_stats import IMPLS
from .buckets import DEFAULT_LENGTH_MULTIPLE, MAX_BUCKETS

LONG_POLICIES = ("truncate", "window")
LOGITS_CAPTURES = ("auto", "output_processor", "labels_none", "output_layer_hook")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HESNRConfigError(ValueError):
    """A wrong ``--hesnr-*`` setting; the message starts with the flag's name."""

    def __init__(self, flag: str, message: str):
        self.flag = flag
        super().__init__(f"{flag}: {message}")


@dataclass(frozen=True)
class EvalDataset:
    """One named evaluation set: a prepared-trajectory prefix (``<prefix>.bin/.idx``)."""

    name: str
    prefix: str


def parse_data_specs(values) -> tuple[EvalDataset, ...]:
    """``["swe=/data/swe", "/data/other"]`` -> named sets (a bare prefix is named by its basename)."""
    out: list[EvalDataset] = []
    for raw in values or ():
        raw = str(raw).strip()
        if not raw:
            raise HESNRConfigError("--hesnr-data-path", "empty entry")
        if "=" in raw:
            name, prefix = raw.split("=", 1)
        else:
            prefix = raw
            name = prefix.rstrip("/").rsplit("/", 1)[-1]
        name, prefix = name.strip(), prefix.strip()
        if not prefix:
            raise HESNRConfigError("--hesnr-data-path", f"entry {raw!r} has no prefix")
        if not _NAME_RE.match(name):
            raise HESNRConfigError(
                "--hesnr-data-path",
                f"set name {name!r} (from {raw!r}) must be letters, digits, '_', '.', '-' "
                "(write NAME=PREFIX to choose one)",
            )
        out.append(EvalDataset(name, prefix))
    names = [d.name for d in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HESNRConfigError("--hesnr-data-path", f"set names must be distinct, repeated: {dup} (use NAME=PREFIX)")
    return tuple(out)


@dataclass(kw_only=True)
class HESNRConfig:
    """Settings of the HE-SNR evaluation (all ``--hesnr-*`` flags)."""

    datasets: tuple[EvalDataset, ...] = ()
    """Named prepared-trajectory sets; empty means the hook is off."""
    eval_interval: int | None = None
    """Run at every evaluation whose iteration is a multiple of this; ``None``: Megatron's --eval-interval."""
    eval_iters: int | None = None
    """Global batches per set and evaluation; ``None``: a full pass over every window."""
    micro_batch_size: int = 1
    """Windows per micro-batch (trajectories are long: 1 is usual)."""
    num_microbatches: int | None = None
    """Micro-batches per data-parallel rank and step; ``None``: max(4, pipeline size)."""
    k: int = DEFAULT_K
    threshold: float = DEFAULT_THRESHOLD
    num_bins: int = DEFAULT_NUM_BINS
    impl: str = "auto"
    category_names: tuple[str, ...] = DEFAULT_CATEGORY_NAMES
    """Names of scoring-mask categories 1, 2, ... as the prepared data defines them."""
    report_categories: tuple[str, ...] = ("action",)
    """Categories logged per evaluation besides the overall result ('all')."""
    jsonl: str | None = None
    """JSONL file that gets one record per evaluation and set (last rank writes)."""
    long_policy: str = "window"
    """Trajectories longer than --seq-length: 'truncate' or sliding 'window's."""
    window_stride: int | None = None
    """New targets per window under 'window'; ``None``: half the sequence length."""
    logits_capture: str = "auto"
    """How logits are taken from the model (see :mod:`.capture`)."""
    run_name: str | None = None
    """Recorded in each JSONL record (default: the checkpoint directory name)."""
    skip_empty_windows: bool = True
    """Skip windows that score no token (their forward would add nothing)."""
    length_multiple: int = DEFAULT_LENGTH_MULTIPLE
    """Bucket lengths are multiples of this (and of 2 x CP, and of TP with sequence parallelism)."""
    max_buckets: int = MAX_BUCKETS
    """Most distinct sequence lengths per set (each a shape the model is run at)."""
    pad_to_seq_length: bool = False
    """Pad every window to --seq-length (one bucket) instead of bucketing windows by length."""

    def __post_init__(self):
        self.datasets = tuple(self.datasets)
        self.category_names = tuple(self.category_names)
        self.report_categories = tuple(self.report_categories)
        if self.eval_interval is not None and self.eval_interval < 1:
            raise HESNRConfigError("--hesnr-eval-interval", f"must be >= 1, got {self.eval_interval}")
        if self.eval_iters is not None and self.eval_iters < 1:
            raise HESNRConfigError("--hesnr-eval-iters", f"must be >= 1 (omit it for a full pass), got {self.eval_iters}")
        if self.micro_batch_size < 1:
            raise HESNRConfigError("--hesnr-micro-batch-size", f"must be >= 1, got {self.micro_batch_size}")
        if self.num_microbatches is not None and self.num_microbatches < 1:
            raise HESNRConfigError("--hesnr-num-microbatches", f"must be >= 1, got {self.num_microbatches}")
        if int(self.k) != self.k or self.k < 2:
            raise HESNRConfigError("--hesnr-k", f"must be an integer >= 2, got {self.k}")
        if not 0.0 < self.threshold < math.log(self.k):
            raise HESNRConfigError(
                "--hesnr-threshold", f"must lie in (0, ln k = {math.log(self.k):.6f}) for k={self.k}, got {self.threshold}"
            )
        if self.num_bins < 1:
            raise HESNRConfigError("--hesnr-num-bins", f"must be >= 1, got {self.num_bins}")
        if self.impl not in IMPLS:
            raise HESNRConfigError("--hesnr-impl", f"must be one of {IMPLS}, got {self.impl!r}")
        if not self.category_names or len(set(self.category_names)) != len(self.category_names) or "all" in self.category_names:
            raise HESNRConfigError(
                "--hesnr-category-names", f"must be distinct names other than 'all', got {list(self.category_names)}"
            )
        unknown = [c for c in self.report_categories if c != "all" and c not in self.category_names]
        if unknown:
            raise HESNRConfigError(
                "--hesnr-report-categories",
                f"unknown {unknown}; known: {['all', *self.category_names]}",
            )
        if self.long_policy not in LONG_POLICIES:
            raise HESNRConfigError("--hesnr-long-policy", f"must be one of {LONG_POLICIES}, got {self.long_policy!r}")
        if self.window_stride is not None:
            if self.long_policy != "window":
                raise HESNRConfigError("--hesnr-window-stride", "only applies with --hesnr-long-policy window")
            if self.window_stride < 1:
                raise HESNRConfigError("--hesnr-window-stride", f"must be >= 1, got {self.window_stride}")
        if int(self.length_multiple) != self.length_multiple or self.length_multiple < 1:
            raise HESNRConfigError("--hesnr-length-multiple", f"must be an integer >= 1, got {self.length_multiple}")
        if int(self.max_buckets) != self.max_buckets or self.max_buckets < 1:
            raise HESNRConfigError("--hesnr-max-buckets", f"must be an integer >= 1, got {self.max_buckets}")
        if self.logits_capture not in LOGITS_CAPTURES:
            raise HESNRConfigError("--hesnr-logits-capture", f"must be one of {LOGITS_CAPTURES}, got {self.logits_capture!r}")
        if self.enabled:
            parse_data_specs([f"{d.name}={d.prefix}" for d in self.datasets])  # names valid and distinct

    @property
    def enabled(self) -> bool:
        return bool(self.datasets)

    def stride_for(self, seq_length: int) -> int:
        """The window stride for ``seq_length`` (validated by :meth:`check_against`)."""
        return self.window_stride if self.window_stride is not None else max(1, seq_length // 2)

    def check_against(self, *, seq_length: int, eval_interval: int | None, eval_iters: int | None,
                      skip_train: bool = False, mtp: bool = False, has_output_processor: bool = False,
                      model_name: str = "GPTModel") -> None:
        """Refuse combinations with Megatron's own settings (called once at start-up)."""
        if not self.enabled:
            return
        if seq_length is None or seq_length < 2:
            raise HESNRConfigError("--seq-length", f"HE-SNR windows need --seq-length >= 2, got {seq_length}")
        if self.window_stride is not None and self.window_stride > seq_length:
            raise HESNRConfigError(
                "--hesnr-window-stride", f"{self.window_stride} exceeds --seq-length {seq_length}: tokens would be skipped"
            )
        # The hook runs inside Megatron's evaluate(): without validation it never runs.
        if not eval_iters:
            raise HESNRConfigError(
                "--hesnr-data-path",
                "the hook runs inside Megatron's evaluation, which is off: set --eval-iters >= 1 "
                "and a validation split (or --skip-train with a validation set)",
            )
        if not skip_train:
            if not eval_interval:
                raise HESNRConfigError("--hesnr-data-path", "needs Megatron's --eval-interval >= 1 during training")
            if self.eval_interval is not None and self.eval_interval % eval_interval != 0:
                raise HESNRConfigError(
                    "--hesnr-eval-interval",
                    f"{self.eval_interval} must be a multiple of --eval-interval {eval_interval} "
                    "(the hook runs only when Megatron evaluates)",
                )
        if self.logits_capture == "output_processor" and not has_output_processor:
            raise HESNRConfigError(
                "--hesnr-logits-capture",
                f"output_processor: this megatron-core's {model_name}.forward takes no output_processor "
                "(GPTModel has it from core 0.18, HybridModel not yet); use auto",
            )
        if mtp and self.logits_capture == "labels_none" and not has_output_processor:
            raise HESNRConfigError(
                "--hesnr-logits-capture",
                "labels_none with --mtp-num-layers fails before megatron-core 0.19; use auto or output_layer_hook",
            )
