"""What the HE-SNR evaluation hook does: one ``@dataclass(kw_only=True)`` config.

The config is filled from the ``--hesnr-*`` flags (see :mod:`.args`), but it is plain
data so that other front ends (NeMo / Megatron-Bridge) can build it directly.
Every check names the flag it comes from, so a refusal at start-up points at the
command line the user wrote.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from ..metric.accumulator import AccumulatorConfig, AccumulatorConfigError
from ..metric.token_stats import IMPLS
from .buckets import DEFAULT_LENGTH_MULTIPLE, MAX_BUCKETS

LONG_POLICIES = ("truncate", "window")
LOGITS_CAPTURES = ("auto", "chunked", "output_processor", "labels_none", "output_layer_hook")
#: The captures that take a micro-batch's whole logits out of the model (``--hesnr-logits-chunk`` does not apply).
FULL_LOGITS_CAPTURES = ("output_processor", "labels_none", "output_layer_hook")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HESNRConfigError(ValueError):
    """A wrong setting, its detail as fields.

    ``flag``: the command-line flag or host setting it is about (``--hesnr-k``, ``--eval-interval``,
    ``validation.eval_iters``; ``None`` for a setting without a flag); ``field``: the dotted path of
    our config field (``metric.k``), ``None`` for the host's settings; ``message``: what is wrong;
    ``name``: how ``str()`` names the setting, ``"<name>: <message>"`` (the flag by default; Bridge
    names its field, ``HESNRBridgeConfig.metric.k (--hesnr-k)``).
    """

    def __init__(self, flag: str | None, message: str, *, field: str | None = None, name: str | None = None):
        self.flag, self.message = flag, message
        self.field = field if field is not None else field_for_flag(flag)
        self.name = name or flag or self.field
        super().__init__(f"{self.name}: {message}")


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


def flag_spec(flag: str, help: str, table: tuple[str, str, str], *, after: str | None = None, **argparse_kw) -> dict:
    """One command-line flag: ``help`` is its ``--help`` text; ``table`` its row of the flag table in
    docs/megatron-lm.md (flag usage, default, meaning); ``argparse_kw`` what ``add_argument`` needs besides them (``type``, ``nargs``,
    ``choices``, ``action``, ``metavar``; ``default`` when the parser's differs from the field's)."""
    return {"flag": flag, "help": help, "table": table, "argparse": argparse_kw, "after": after}


def setting(value, flag: str, help: str, table: tuple[str, str, str], **argparse_kw):
    """A config field that carries its command-line flag (see :func:`flag_spec`); ``value`` is its default."""
    return field(default=value, metadata=flag_spec(flag, help, table, **argparse_kw))


def nested_settings(cls, **specs):
    """A config field holding a ``cls`` object (built from its defaults) whose fields carry flags:
    ``specs`` maps each of those fields to its :func:`flag_spec` (its default is ``cls``'s).
    A spec with ``after="<field>"`` is listed after that later field of the outer config instead
    of in place (the flag table, ``--help`` and the records keep that order)."""
    return field(default_factory=cls, metadata={"settings": specs})


@dataclass(kw_only=True)
class HESNRConfig:
    """Settings of the HE-SNR evaluation (all ``--hesnr-*`` flags, see :func:`setting` and
    :func:`nested_settings`; :func:`flag_settings` lists them)."""

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
    metric: AccumulatorConfig = nested_settings(
        AccumulatorConfig,
        k=flag_spec("--hesnr-k", "Top-k candidate set size.", ("K", "10", "top-k candidate set"), type=int),
        threshold=flag_spec("--hesnr-threshold", "High-entropy threshold on H_k (default (ln 3 + ln 4) / 2).",
                            ("EPS", "(ln 3 + ln 4)/2", "high-entropy threshold on H_k"), type=float),
        num_bins=flag_spec("--hesnr-num-bins", "H_k histogram bins on [0, ln k].",
                           ("N", "512", "H_k histogram bins on [0, ln k]"), type=int),
        category_names=flag_spec("--hesnr-category-names",
                                 "Names of scoring-mask categories 1, 2, ... of the prepared data.",
                                 ("...", "action thought observation", "names of mask categories 1, 2, ..."),
                                 nargs="+", after="impl"),
    )
    """What is measured (k, threshold, bins, category names): the one object the accumulators of
    every pass are built from (``dataclasses.replace(metric, num_documents=...)``), checked by
    :class:`AccumulatorConfig` itself; a mapping of its fields is accepted too."""
    impl: str = setting(
        "auto", "--hesnr-impl",
        "Statistics implementation: fused Triton kernel on CUDA (auto) or the PyTorch reference.",
        ("{auto,torch,triton}", "auto", "fused kernel on CUDA when available"), choices=IMPLS)
    report_categories: tuple[str, ...] = setting(
        ("action",), "--hesnr-report-categories", "Categories logged besides the overall result ('all').",
        ("...", "action", "categories logged besides the overall result"), nargs="+")
    jsonl: str | None = setting(
        None, "--hesnr-jsonl", "Append one JSON record per evaluation and set (also under --skip-train).",
        ("PATH", "none", "append the records here (also under `--skip-train`)"), metavar="PATH")
    eval_at_start: bool = setting(
        False, "--hesnr-eval-at-start",
        "Before the first training step, evaluate the loaded weights and record them at the loaded iteration "
        "(0 for a base model, N after loading iteration N); skipped for a set whose records file already holds "
        "that run and iteration (a resumed or requeued job).",
        ("", "off", "evaluate the loaded weights before the first training step, at the loaded iteration "
         "(once per run, set and iteration: a requeued job does not repeat it)"), action="store_true")
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
        "How the statistics are taken: chunked (made inside GPTModel's output_processor, core >= 0.18, "
        "a chunk of positions at a time: the whole logits never exist; auto where the model has "
        "output_processor), or from the whole logits of a micro-batch: output_processor, labels_none "
        "(forward(labels=None)), output_layer_hook (forward hook on output_layer).",
        ("{auto,chunked,output_processor,labels_none,output_layer_hook}", "auto",
         "how the statistics are taken (see below)"),
        choices=LOGITS_CAPTURES)
    logits_chunk: int | str = setting(
        "auto", "--hesnr-logits-chunk",
        "Positions per chunk of the chunked capture (auto: as many as keep a chunk's logits at 256 MiB "
        "per rank).",
        ("{auto,N}", "auto", "positions per chunk of the chunked capture (auto: 256 MiB of logits per rank)"),
        metavar="{auto,N}")
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
        self.metric = checked_metric(self.metric)
        self.report_categories = tuple(self.report_categories)
        if self.eval_interval is not None and self.eval_interval < 1:
            raise HESNRConfigError("--hesnr-eval-interval", f"must be >= 1, got {self.eval_interval}")
        if self.eval_iters is not None and self.eval_iters < 1:
            raise HESNRConfigError("--hesnr-eval-iters", f"must be >= 1 (omit it for a full pass), got {self.eval_iters}")
        if self.micro_batch_size < 1:
            raise HESNRConfigError("--hesnr-micro-batch-size", f"must be >= 1, got {self.micro_batch_size}")
        if self.num_microbatches is not None and self.num_microbatches < 1:
            raise HESNRConfigError("--hesnr-num-microbatches", f"must be >= 1, got {self.num_microbatches}")
        if self.impl not in IMPLS:
            raise HESNRConfigError("--hesnr-impl", f"must be one of {IMPLS}, got {self.impl!r}")
        unknown = [c for c in self.report_categories if c != "all" and c not in self.metric.category_names]
        if unknown:
            raise HESNRConfigError(
                "--hesnr-report-categories",
                f"unknown {unknown}; known: {['all', *self.metric.category_names]}",
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
        self.logits_chunk = checked_chunk(self.logits_chunk)
        if self.logits_chunk != "auto" and self.logits_capture in FULL_LOGITS_CAPTURES:
            raise HESNRConfigError("--hesnr-logits-chunk", f"applies to the chunked capture only, not to "
                                   f"--hesnr-logits-capture {self.logits_capture} (which builds the whole logits)")
        if self.enabled:
            parse_data_specs([f"{d.name}={d.prefix}" for d in self.datasets])  # names valid and distinct

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
        name = host.names.__getitem__

        def own(field_name: str, message: str) -> HESNRConfigError:  # about one of our fields, in the host's naming
            return HESNRConfigError(flag_of(field_name), message, field=field_name, name=host.field_name(field_name))

        seq = host.seq_length
        if not isinstance(seq, int) or seq < 2:
            raise HESNRConfigError(name("seq_length"), f"HE-SNR windows need a sequence length >= 2, got {seq!r}")
        if self.window_stride is not None and self.window_stride > seq:
            raise own("window_stride",
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
                raise own("eval_interval", f"{self.eval_interval} must be a multiple of {name('eval_interval')} "
                                           f"{host.eval_interval} (HE-SNR runs only when {host.host} evaluates)")
        cp = host.context_parallel_size or 1
        if cp > 1 and seq % (2 * cp):
            raise HESNRConfigError(name("seq_length"),
                                   f"{seq} must be divisible by 2 x {name('context_parallel_size')} = {2 * cp}")
        if self.logits_capture in ("output_processor", "chunked") and not host.has_output_processor:
            raise own(
                "logits_capture",
                f"{self.logits_capture}: this megatron-core's {host.model_name}.forward takes no output_processor "
                "(GPTModel has it from core 0.18, HybridModel not yet); use auto",
            )
        if host.mtp and self.logits_capture == "labels_none" and not host.has_output_processor:
            raise own("logits_capture", f"labels_none with {name('mtp')} fails before "
                                        "megatron-core 0.19; use auto or output_layer_hook")


def checked_chunk(value) -> int | str:
    """``--hesnr-logits-chunk``: ``"auto"`` or a positive number of positions (a string of digits too)."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HESNRConfigError("--hesnr-logits-chunk", f"must be a positive number of positions or auto, got {value!r}")
    return value


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


def checked_metric(metric) -> AccumulatorConfig:
    """``metric`` (an :class:`AccumulatorConfig` or a mapping of its fields) checked by
    :class:`AccumulatorConfig` itself, again for an object (a field may have been set since it was
    built: Bridge overrides, then ``finalize()``); a refusal names the flag and the field."""
    if not isinstance(metric, (Mapping, AccumulatorConfig)):
        raise HESNRConfigError(None, f"must be an AccumulatorConfig or a mapping of its fields, got {metric!r}",
                               field="metric")
    values = dict(metric) if isinstance(metric, Mapping) else vars(metric)
    known = [f.name for f in fields(AccumulatorConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise HESNRConfigError(None, f"unknown {unknown}; known: {known}", field="metric")
    if values.get("num_documents") is not None:
        raise HESNRConfigError(None, f"is set for each set by the evaluation pass; leave it None, got "
                                     f"{values['num_documents']!r}", field="metric.num_documents")
    try:
        if isinstance(metric, Mapping):
            return AccumulatorConfig(**values)
        metric.__post_init__()
        return metric
    except AccumulatorConfigError as exc:
        raise HESNRConfigError(flag_of(f"metric.{exc.field}"), exc.message, field=f"metric.{exc.field}") from None


@dataclass(frozen=True)
class Setting:
    """One ``--hesnr-*`` flag and the config value it sets, at ``path`` (``("impl",)``, ``("metric", "k")``)."""

    path: tuple[str, ...]
    flag: str
    help: str
    table: tuple[str, str, str]
    argparse: dict
    default: Any

    @property
    def field(self) -> str:
        """The dotted path of the field (``metric.k``): Bridge's name for it."""
        return ".".join(self.path)

    @property
    def key(self) -> str:
        """The name of the value in the records' ``config`` (``k``)."""
        return self.path[-1]

    @property
    def inverted(self) -> bool:
        """Whether the on/off flag means the opposite of the field (``--hesnr-keep-empty-windows``)."""
        return self.argparse.get("action") == "store_true" and self.default is True

    def get(self, config) -> Any:
        return functools.reduce(getattr, self.path, config)


@functools.cache
def flag_settings() -> tuple[Setting, ...]:
    """Every flag of :class:`HESNRConfig`, its nested fields' included, in flag order."""
    out, later = [], {}
    for f in fields(HESNRConfig):
        if "flag" in f.metadata:
            out.append(_setting((f.name,), f.metadata, f.default))
        for name, spec in f.metadata.get("settings", {}).items():
            default = f.default_factory.__dataclass_fields__[name].default
            entry = _setting((f.name, name), spec, default)
            (later.setdefault(spec["after"], []) if spec["after"] else out).append(entry)
        out.extend(later.pop(f.name, ()))
    assert not later, f"flags listed after no earlier field: {later}"
    return tuple(out)


def _setting(path: tuple[str, ...], spec: Mapping, default) -> Setting:
    return Setting(path, spec["flag"], spec["help"], spec["table"], spec["argparse"], default)


def flag_of(field_path: str) -> str | None:
    """The ``--hesnr-*`` flag of a :class:`HESNRConfig` field (``metric.k`` -> ``--hesnr-k``); ``None``: it has none."""
    return next((s.flag for s in flag_settings() if s.field == field_path), None)


def field_for_flag(flag: str | None) -> str | None:
    """The :class:`HESNRConfig` field behind a ``--hesnr-*`` flag (``--hesnr-k`` -> ``metric.k``); ``None``: not ours."""
    return next((s.field for s in flag_settings() if s.flag == flag), None)


def flag_table() -> list[str]:
    """The flag table of docs/megatron-lm.md, one Markdown row per flag, from the fields."""
    rows = []
    for s in flag_settings():
        usage, default, meaning = s.table
        rows.append(f"| `{s.flag}{' ' + usage if usage else ''}` | {default} | {meaning} |")
    return rows
