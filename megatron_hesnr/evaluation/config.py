"""What the HE-SNR evaluation hook does: one ``@dataclass(kw_only=True)`` config.

The config is filled from the ``--hesnr-*`` flags (see :mod:`.args`), but it is plain
data so that other front ends (NeMo / Megatron-Bridge) can build it directly.
Every check names the flag it comes from, so a refusal at start-up points at the
command line the user wrote.
"""
from __future__ import annotations

import re
from dataclasses import Field, dataclass, field, fields
from typing import Callable

from ..accumulator import AccumulatorConfig, AccumulatorConfigError
from ..defaults import DEFAULT_CATEGORY_NAMES, DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD
from ..token_stats import IMPLS
from .buckets import DEFAULT_LENGTH_MULTIPLE, MAX_BUCKETS

LONG_POLICIES = ("truncate", "window")
LOGITS_CAPTURES = ("auto", "output_processor", "labels_none", "output_layer_hook")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HESNRConfigError(ValueError):
    """A wrong setting: ``flag`` names it (a ``--hesnr-*`` flag, a host flag or a config field),
    ``message`` says what is wrong; ``str()`` is ``"<flag>: <message>"``."""

    def __init__(self, flag: str, message: str):
        self.flag, self.message = flag, message
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


def setting(value, flag: str, help: str, table: tuple[str, str, str], **argparse_kw):
    """A config field that carries its command-line flag (the one place a setting is defined).

    ``help`` is the ``--help`` text; ``table`` the README row's (flag usage, default, meaning);
    ``value`` is the field's default; ``argparse_kw`` what ``add_argument`` needs besides them (``type``, ``nargs``, ``choices``,
    ``action``, ``metavar``; ``default`` when the parser's differs from the field's).
    """
    return field(default=value, metadata={"flag": flag, "help": help, "table": table, "argparse": argparse_kw})


@dataclass(kw_only=True)
class HESNRConfig:
    """Settings of the HE-SNR evaluation (all ``--hesnr-*`` flags, see :func:`setting`)."""

    datasets: tuple[EvalDataset, ...] = setting(
        (), "--hesnr-data-path",
        "Prepared trajectory sets (hesnr prepare output prefixes); NAME=PREFIX names a "
        "set, a bare PREFIX is named by its basename. Off when not given.",
        ("[NAME=]PREFIX ...", "off", "prepared sets; a bare prefix is named by its basename"),
        nargs="+", default=None, metavar="[NAME=]PREFIX")
    eval_interval: int | None = setting(
        None, "--hesnr-eval-interval",
        "Evaluate HE-SNR every N iterations (a multiple of --eval-interval; default: at every Megatron evaluation).",
        ("N", "every evaluation", "a multiple of `--eval-interval`"), type=int)
    eval_iters: int | None = setting(
        None, "--hesnr-eval-iters", "Global batches per set and evaluation (default: a full pass over every window).",
        ("N", "full pass", "global batches of windows per set and evaluation"), type=int)
    micro_batch_size: int = setting(
        1, "--hesnr-micro-batch-size", "Windows per micro-batch.", ("N", "1", "windows per micro-batch"), type=int)
    num_microbatches: int | None = setting(
        None, "--hesnr-num-microbatches",
        "Micro-batches per data-parallel rank and step (default: max(4, pipeline size); more per step means "
        "fewer schedule calls and a smaller pipeline bubble).",
        ("N", "max(4, PP size)", "micro-batches per DP rank and step"), type=int)
    k: int = setting(DEFAULT_K, "--hesnr-k", "Top-k candidate set size.", ("K", "10", "top-k candidate set"), type=int)
    threshold: float = setting(
        DEFAULT_THRESHOLD, "--hesnr-threshold", "High-entropy threshold on H_k (default (ln 3 + ln 4) / 2).",
        ("EPS", "(ln 3 + ln 4)/2", "high-entropy threshold on H_k"), type=float)
    num_bins: int = setting(
        DEFAULT_NUM_BINS, "--hesnr-num-bins", "H_k histogram bins on [0, ln k].",
        ("N", "512", "H_k histogram bins on [0, ln k]"), type=int)
    impl: str = setting(
        "auto", "--hesnr-impl",
        "Statistics implementation: fused Triton kernel on CUDA (auto) or the PyTorch reference.",
        ("{auto,torch,triton}", "auto", "fused kernel on CUDA when available"), choices=IMPLS)
    category_names: tuple[str, ...] = setting(
        DEFAULT_CATEGORY_NAMES, "--hesnr-category-names",
        "Names of scoring-mask categories 1, 2, ... of the prepared data.",
        ("...", "action thought observation", "names of mask categories 1, 2, ..."), nargs="+")
    report_categories: tuple[str, ...] = setting(
        ("action",), "--hesnr-report-categories", "Categories logged besides the overall result ('all').",
        ("...", "action", "categories logged besides the overall result"), nargs="+")
    jsonl: str | None = setting(
        None, "--hesnr-jsonl", "Append one JSON record per evaluation and set (also under --skip-train).",
        ("PATH", "none", "append the records here (also under `--skip-train`)"), metavar="PATH")
    long_policy: str = setting(
        "window", "--hesnr-long-policy",
        "Trajectories longer than --seq-length: truncate, or sliding windows that score "
        "every target once with as much context as fits.",
        ("{window,truncate}", "window", "trajectories longer than `--seq-length`"), choices=LONG_POLICIES)
    window_stride: int | None = setting(
        None, "--hesnr-window-stride",
        "New targets per sliding window (default --seq-length / 2; smaller = more context, more compute).",
        ("N", "seq-length / 2", "new targets per sliding window; each target is scored once, by the window "
         "giving it the most context (>= seq-length - stride)"), type=int)
    logits_capture: str = setting(
        "auto", "--hesnr-logits-capture",
        "How logits are taken: output_processor (core >= 0.19), labels_none "
        "(forward(labels=None)), output_layer_hook (forward hook on output_layer).",
        ("{auto,output_processor,labels_none,output_layer_hook}", "auto", "how logits are taken"),
        choices=LOGITS_CAPTURES)
    run_name: str | None = setting(
        None, "--hesnr-run-name", "Run name written into the JSONL records.",
        ("NAME", "checkpoint dir name", "`run` field of the records"))
    skip_empty_windows: bool = setting(
        True, "--hesnr-keep-empty-windows", "Also run windows that score no token (normally skipped).",
        ("", "off", "also run windows that score no token"), action="store_true", default=False)
    """The flag inverts the field: ``--hesnr-keep-empty-windows`` is ``skip_empty_windows=False``."""
    length_multiple: int = setting(
        DEFAULT_LENGTH_MULTIPLE, "--hesnr-length-multiple",
        "Windows are grouped into a few length buckets and each bucket runs at its own "
        "sequence length, a multiple of this (and of 2 x CP, and of TP with sequence "
        "parallelism), or --seq-length itself.",
        ("N", "128", "bucket lengths are multiples of N (see below)"), type=int)
    max_buckets: int = setting(
        MAX_BUCKETS, "--hesnr-max-buckets",
        "Most distinct sequence lengths per set (fewer shapes for CUDA graphs / TE plans, "
        "more padding); the planner uses as few as keep positions fed <= 1.05x the real inputs.",
        ("N", "32", "most distinct sequence lengths per set (see below)"), type=int)
    pad_to_seq_length: bool = setting(
        False, "--hesnr-pad-to-seq-length", "Pad every window to --seq-length instead (slower; for comparison).",
        ("", "off", "pad every window to `--seq-length` instead of bucketing (for comparison)"), action="store_true")

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
        try:
            self.accumulator_config()  # k, threshold, bins and category names: checked there only
        except AccumulatorConfigError as exc:
            raise HESNRConfigError(flag_of(exc.field), exc.message) from None
        if self.impl not in IMPLS:
            raise HESNRConfigError("--hesnr-impl", f"must be one of {IMPLS}, got {self.impl!r}")
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

    def accumulator_config(self, num_documents: int | None = None) -> AccumulatorConfig:
        """What the accumulators measure; ``num_documents``: keep per-trajectory sums for that many."""
        return AccumulatorConfig(k=self.k, threshold=self.threshold, num_bins=self.num_bins,
                                 category_names=self.category_names, num_documents=num_documents)

    @property
    def enabled(self) -> bool:
        return bool(self.datasets)

    def stride_for(self, seq_length: int) -> int:
        """The window stride for ``seq_length`` (validated by :meth:`check_against`)."""
        return self.window_stride if self.window_stride is not None else max(1, seq_length // 2)

    def check_against(self, host: HostSettings) -> None:
        """Refuse combinations with the host's own settings (called once at start-up, by every front end)."""
        if not self.enabled:
            return
        name, own = host.names.__getitem__, host.field_name
        seq = host.seq_length
        if not isinstance(seq, int) or seq < 2:
            raise HESNRConfigError(name("seq_length"), f"HE-SNR windows need a sequence length >= 2, got {seq!r}")
        if self.window_stride is not None and self.window_stride > seq:
            raise HESNRConfigError(own("window_stride"),
                                   f"{self.window_stride} exceeds {name('seq_length')} {seq}: tokens would be skipped")
        # HE-SNR runs inside the host's evaluation: without validation it never runs.
        if not host.eval_iters:
            raise HESNRConfigError(name("eval_iters"), f"HE-SNR runs inside {host.host}'s evaluation, which is off: "
                                   "set it >= 1 and give a validation split")
        if not host.skip_train:
            if not host.eval_interval:
                raise HESNRConfigError(name("eval_interval"),
                                       f"HE-SNR needs {host.host}'s evaluation during training (>= 1)")
            if self.eval_interval is not None and self.eval_interval % host.eval_interval:
                raise HESNRConfigError(
                    own("eval_interval"), f"{self.eval_interval} must be a multiple of {name('eval_interval')} "
                                          f"{host.eval_interval} (HE-SNR runs only when {host.host} evaluates)")
        cp = host.context_parallel_size or 1
        if cp > 1 and seq % (2 * cp):
            raise HESNRConfigError(name("seq_length"),
                                   f"{seq} must be divisible by 2 x {name('context_parallel_size')} = {2 * cp}")
        if self.logits_capture == "output_processor" and not host.has_output_processor:
            raise HESNRConfigError(
                own("logits_capture"),
                f"output_processor: this megatron-core's {host.model_name}.forward takes no output_processor "
                "(GPTModel has it from core 0.18, HybridModel not yet); use auto",
            )
        if host.mtp and self.logits_capture == "labels_none" and not host.has_output_processor:
            raise HESNRConfigError(own("logits_capture"), f"labels_none with {name('mtp')} fails before "
                                                          "megatron-core 0.19; use auto or output_layer_hook")


#: How Megatron-LM spells the host settings :meth:`HESNRConfig.check_against` reads.
MEGATRON_NAMES = {"seq_length": "--seq-length", "eval_interval": "--eval-interval", "eval_iters": "--eval-iters",
                  "context_parallel_size": "--context-parallel-size", "mtp": "--mtp-num-layers"}


@dataclass(frozen=True, kw_only=True)
class HostSettings:
    """The host's settings an HE-SNR config must fit, and how the host spells them in errors.

    ``names`` maps each setting to the host's own spelling (``--eval-interval`` under
    Megatron-LM, ``validation.eval_interval`` under Bridge); ``field_name`` names one of
    our fields (the flag under Megatron-LM, ``HESNRBridgeConfig.<field>`` under Bridge).
    """

    seq_length: int | None
    eval_interval: int | None
    eval_iters: int | None
    skip_train: bool = False
    mtp: bool = False
    context_parallel_size: int = 1
    has_output_processor: bool = False
    model_name: str = "GPTModel"
    host: str = "Megatron"
    names: dict = field(default_factory=lambda: dict(MEGATRON_NAMES))
    field_name: Callable[[str], str] = field(default=lambda name: flag_of(name))


def flag_fields() -> tuple[Field, ...]:
    """The :class:`HESNRConfig` fields that have a ``--hesnr-*`` flag, in flag order."""
    return tuple(f for f in fields(HESNRConfig) if "flag" in f.metadata)


def inverted(f: Field) -> bool:
    """Whether the field's on/off flag means the opposite of the field (``--hesnr-keep-empty-windows``)."""
    return f.metadata["argparse"].get("action") == "store_true" and f.default is True


def flag_of(name: str) -> str:
    """The ``--hesnr-*`` flag of a :class:`HESNRConfig` field (``k`` -> ``--hesnr-k``)."""
    return HESNRConfig.__dataclass_fields__[name].metadata["flag"]


def field_for_flag(flag: str) -> str:
    """The :class:`HESNRConfig` field behind a ``--hesnr-*`` flag (``--hesnr-k`` -> ``k``); other names unchanged."""
    return next((f.name for f in flag_fields() if f.metadata["flag"] == flag), flag)


def flag_table() -> list[str]:
    """The README's flag table, one Markdown row per flag, from the fields."""
    rows = []
    for f in flag_fields():
        usage, default, meaning = f.metadata["table"]
        rows.append(f"| `{f.metadata['flag']}{' ' + usage if usage else ''}` | {default} | {meaning} |")
    return rows
