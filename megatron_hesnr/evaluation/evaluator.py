"""The HE-SNR evaluator every front end drives: sets, when to run, the pass, records, sinks.

It reads no Megatron-LM or Bridge globals.  A front end gives it, once, the settings
(:class:`~.config.HESNRConfig`, already checked against the host's own), a topology
function, a forward-only schedule and a way to open a set; and at each evaluation an
:class:`EvalContext` with what the host knows about this evaluation.
:class:`~megatron_hesnr.megatron_lm.hook.MegatronHESNRHook` fills it from ``get_args()``,
:class:`~megatron_hesnr.bridge.HESNRCallback` from Bridge's ``GlobalState``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .capture import LogitsCapture, describe_capture, resolve_capture, unwrap
from .config import HESNRConfig, HESNRConfigError
from .eval_pass import HESNRPass, TokenObserver, WindowedSet, plan_for_layout, plan_set
from .guard import training_state_preserved
from .logging_sinks import (
    format_validation_line,
    left_out_message,
    print_note,
    print_validation_line,
    write_tensorboard,
    write_wandb,
)
from ..metric.rank_agreement import device_backend
from .records import append_records, config_dict, make_record, recorded_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """The parallel layout the host was started with (for the start-up bucket plan)."""

    dp_size: int
    pp_size: int = 1
    cp_size: int = 1
    tp_size: int = 1
    sequence_parallel: bool = False
    vp_group: int | None = None
    """Micro-batches per virtual-pipeline round; ``None`` without interleaving."""


@dataclass(frozen=True, kw_only=True)
class EvalContext:
    """What the host tells the evaluator about one evaluation (or, at start-up, about the run)."""

    iteration: int
    consumed_samples: int | None
    seq_length: int
    padded_vocab_size: int | None
    run_dir: str | None
    """Directory of the run whose weights are evaluated (``--save``, or ``--load`` under skip-train)."""
    checkpoint: str | None
    """The evaluated step's checkpoint path (``<run_dir>/iter_<N:07d>``)."""
    skip_train: bool = False
    mtp: bool = False
    make_attention_mask: bool = False
    layout: Layout | None = None
    has_output_processor: bool | None = None
    """Whether the host's model class takes ``output_processor`` (``None``: unknown until the first evaluation)."""
    model_name: str = "GPTModel"


def checkpoint_path(run_dir: str | None, step: int) -> tuple[str | None, str | None]:
    """(run directory, ``<run_dir>/iter_<step:07d>``); both ``None`` without a directory."""
    if not run_dir:
        return None, None
    return run_dir, os.path.join(run_dir, f"iter_{step:07d}")


def open_prepared_dataset(prefix: str):
    """The data layer's ``PreparedDataset`` (``<prefix>_tokens/_mask`` + manifest).

    Rank 0 hashes the files against the manifest; the other ranks (thousands on a
    large job, all reading the same shared file system at start-up) check sizes only.
    """
    from ..data.dataset import PreparedDataset

    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    return PreparedDataset(prefix, verify="full" if rank0 else "sizes")


def dataset_vocab_size(dataset, prefix: str) -> int:
    manifest = getattr(dataset, "manifest", None) or {}
    try:
        return int(manifest["tokenizer"]["vocab_size"])
    except (KeyError, TypeError, ValueError):
        raise HESNRConfigError("--hesnr-data-path", f"{prefix}: manifest has no tokenizer.vocab_size") from None


def is_last_rank() -> bool:
    """The last rank of the world: where the evaluator prints and writes (Megatron's logging rank)."""
    if not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


class HESNREvaluator:
    """Opens and plans the sets once, then evaluates them when the host evaluates."""

    def __init__(self, config: HESNRConfig, *, topology: Callable, forward_backward_func: Callable,
                 open_dataset: Callable | None = None, token_observer: TokenObserver | None = None):
        """``token_observer``: given to every pass (see :data:`~.eval_pass.TokenObserver`)."""
        self.config = config
        self._topology = topology
        self._fb = forward_backward_func
        self._open_dataset = open_dataset or open_prepared_dataset
        self._token_observer = token_observer
        self.sets: list[tuple[WindowedSet, int]] | None = None
        self.last_iteration: int | None = None
        self.plans: dict = {}
        self.capture_line: str | None = None
        """The logits capture and chunk in words (logged at start-up and again if the first evaluation differs)."""
        """Bucket plan of each set at the last evaluation (logged once, recorded in every JSONL config)."""

    def setup(self, ctx: EvalContext) -> None:
        """Open and plan every set (fails fast on a missing prefix or a bad manifest); once."""
        if self.sets is not None:
            return
        cfg, sets = self.config, []
        if ctx.has_output_processor is not None:
            self.capture_line = describe_capture(cfg.logits_capture, cfg.logits_chunk, mtp=ctx.mtp,
                                                 has_output_processor=ctx.has_output_processor,
                                                 model_name=ctx.model_name)
            log.info("HE-SNR %s", self.capture_line)
        for spec in cfg.datasets:
            ds = self._open_dataset(spec.prefix)
            vocab = dataset_vocab_size(ds, spec.prefix)
            padded = ctx.padded_vocab_size
            if padded is not None and vocab > padded:
                raise HESNRConfigError("--hesnr-data-path",
                                       f"{spec.prefix}: tokenizer vocab_size {vocab} exceeds the model's padded vocabulary {padded}")
            wset = plan_set(spec.name, ds, ctx.seq_length, cfg.long_policy,
                            cfg.stride_for(ctx.seq_length) if cfg.long_policy == "window" else None,
                            skip_empty=cfg.skip_empty_windows)
            if wset.dropped_scored_targets:
                log.warning("HE-SNR set %s: %d of %d scored tokens lie beyond --seq-length %d and are dropped "
                            "(--hesnr-long-policy truncate)", spec.name, wset.dropped_scored_targets,
                            wset.num_scored_targets, ctx.seq_length)
            log.info("HE-SNR set %s: %s", spec.name, wset.summary())
            if ctx.layout is not None:
                # The pass makes the plan from its topology and model chunks; given the same layout it is
                # the same (cached) plan, so the first evaluation logs it again only if the two differ.
                lay = ctx.layout
                plan = plan_for_layout(cfg, wset, ctx.seq_length, dp_size=lay.dp_size, pp_size=lay.pp_size,
                                       cp_size=lay.cp_size, tp_size=lay.tp_size,
                                       sequence_parallel=lay.sequence_parallel, vp_group=lay.vp_group)
                log.info("HE-SNR set %s: %s", spec.name, plan.describe())
                self.plans[spec.name] = plan
            sets.append((wset, vocab))
        self.sets = sets

    def should_run(self, ctx: EvalContext) -> bool:
        cfg = self.config
        if ctx.iteration == self.last_iteration:
            return False
        if ctx.skip_train or cfg.eval_interval is None:
            return True
        return ctx.iteration % cfg.eval_interval == 0

    def run(self, model, ctx: EvalContext, only: list[str] | None = None) -> dict:
        """Evaluate every set (those named in ``only``) now: ``{name: (reduced accumulator, metrics)}``
        on the last stage, else ``{}``."""
        self.setup(ctx)
        cfg = self.config
        model = model if isinstance(model, (list, tuple)) else [model]
        topo = self._topology()
        strategy = resolve_capture(model[-1], cfg.logits_capture, mtp=ctx.mtp)
        if self.capture_line is None or not self.capture_line.startswith(f"logits capture {strategy} "):
            inner = unwrap(model[-1])
            self.capture_line = describe_capture(strategy, cfg.logits_chunk, mtp=ctx.mtp,
                                                 has_output_processor=strategy in ("chunked", "output_processor"),
                                                 model_name=type(inner).__name__)
            log.info("HE-SNR %s", self.capture_line)
        out = {}
        with training_state_preserved(model):
            for wset, vocab in self.sets:
                if only is not None and wset.name not in only:
                    continue
                p = HESNRPass(cfg, vocab_size=vocab, seq_length=ctx.seq_length, topology=topo,
                              forward_backward_func=self._fb, capture=LogitsCapture(strategy),
                              padded_vocab_size=ctx.padded_vocab_size, make_attention_mask=ctx.make_attention_mask,
                              token_observer=self._token_observer)
                acc = p.run(model, wset)
                if self.plans.get(wset.name) is not p.plan:
                    log.info("HE-SNR set %s: %s", wset.name, p.plan.describe())
                self.plans[wset.name] = p.plan
                if topo.is_last_stage:
                    out[wset.name] = (acc, p.metrics)
        return out

    def run_name(self, ctx: EvalContext) -> str | None:
        """The records' ``run``: ``--hesnr-run-name``, else the run directory's name."""
        return self.config.run_name or (os.path.basename(os.path.normpath(ctx.run_dir)) if ctx.run_dir else None)

    def evaluate(self, model, ctx: EvalContext) -> dict | None:
        """On every rank: run if due; on the last rank print the lines, append the records and
        return ``{"iteration", "consumed_samples", "sets": {name: {"metrics", "hist"}}}``."""
        if not self.should_run(ctx):
            return None
        return self._evaluate(model, ctx)

    def evaluate_at_start(self, model, ctx: EvalContext) -> dict | None:
        """``--hesnr-eval-at-start``: before the first training step, the loaded weights at the loaded
        iteration (``ctx.iteration``), whatever the evaluation interval, each set once per run and
        iteration: a set whose records file already holds this run, set and iteration (a resumed or
        requeued job starting from the checkpoint its predecessor evaluated) is left out, and when
        every set is, nothing runs. Every rank calls it; every rank takes the same decision (the
        last rank, the writer, reads the records file and tells the others)."""
        self.setup(ctx)
        done = self._recorded_at(self.run_name(ctx), ctx.iteration)
        todo = [name for name in self.set_names() if name not in done]
        self.last_iteration = ctx.iteration   # the loop's own evaluation at this iteration is the same weights
        if done and is_last_rank():
            log.info("HE-SNR at start: %s already recorded at iteration %d of run %s in %s: not evaluated again",
                     ", ".join(sorted(done)), ctx.iteration, self.run_name(ctx), self.config.jsonl)
        if not todo:
            return None
        return self._evaluate(model, ctx, only=todo)

    def set_names(self) -> list[str]:
        return [wset.name for wset, _ in self.sets or ()]

    def _recorded_at(self, run: str | None, iteration: int) -> set[str]:
        """The sets whose records file holds (``run``, set, ``iteration``), the same on every rank."""
        path = self.config.jsonl
        if not path:
            return set()
        names = self.set_names()
        status, message = 0, ""
        if is_last_rank():
            try:
                held = recorded_keys(path) if os.path.exists(path) else set()
                flags = [int((run, name, int(iteration)) in held) for name in names]
            except OSError as exc:
                status, message, flags = 1, f"{path}: cannot be read ({exc})", [0] * len(names)
        else:
            flags = [0] * len(names)
        if torch.distributed.is_initialized():
            device = self._topology().device
            buf = torch.tensor([status, *flags], dtype=torch.int64, device=device)
            staged = buf.cpu() if device_backend(None, device) == "gloo" and device.type != "cpu" else buf
            torch.distributed.broadcast(staged, src=torch.distributed.get_world_size() - 1)
            status, *flags = staged.tolist()
        if status:
            raise HESNRConfigError("--hesnr-jsonl", message or f"{path}: the last rank could not read it (see its error)")
        return {name for name, f in zip(names, flags) if f}

    def _evaluate(self, model, ctx: EvalContext, only: list[str] | None = None) -> dict | None:
        self.last_iteration = ctx.iteration
        t0 = time.perf_counter()
        accs = self.run(model, ctx, only=only)
        seconds = time.perf_counter() - t0
        if not is_last_rank():
            return None
        cfg, iteration = self.config, ctx.iteration
        run_name = self.run_name(ctx)
        records, data = [], {"iteration": iteration, "consumed_samples": ctx.consumed_samples, "sets": {}}
        for (wset, _vocab) in self.sets:
            if wset.name not in accs:
                continue
            acc, metrics = accs[wset.name]
            print_validation_line(format_validation_line(wset.name, iteration, metrics, cfg.report_categories))
            missing = left_out_message(wset.name, iteration, metrics, cfg.report_categories)
            if missing:
                print_note(missing)
            data["sets"][wset.name] = {"metrics": metrics, "hist": acc.histogram()}
            records.append(make_record(
                iteration=iteration, consumed_samples=ctx.consumed_samples, checkpoint=ctx.checkpoint, run=run_name,
                dataset=wset.name, acc=acc, metrics=metrics,
                config=config_dict(cfg, seq_length=ctx.seq_length, data=wset.summary(), eval_seconds=seconds,
                                   buckets=self.plans[wset.name].summary()),
            ))
        log.info("HE-SNR evaluation at iteration %d took %.2f s", iteration, seconds)
        if cfg.jsonl:
            append_records(cfg.jsonl, records)
        return data

    def log(self, data: dict | None, iteration: int, writer, wandb) -> None:
        """TensorBoard (``writer``) and W&B (``wandb``) output of :meth:`evaluate`'s result; last rank."""
        if not data:
            return
        if data["iteration"] != iteration:
            log.warning("HE-SNR ran as iteration %s but Megatron logs iteration %s; TensorBoard uses Megatron's",
                        data["iteration"], iteration)
        cats = self.config.report_categories
        for name, d in data["sets"].items():
            if writer is not None:
                write_tensorboard(writer, name, iteration, data.get("consumed_samples"), d["metrics"], d["hist"], cats)
            if wandb:
                write_wandb(wandb, name, iteration, d["metrics"], cats)
