"""The Megatron-LM hook: the thin layer that reads Megatron's globals.

Megatron's ``evaluate()`` calls ``non_loss_data_func(model)`` on every rank after its
own validation loss, with the model in eval mode, and ``evaluate_and_print_results``
then calls ``process_non_loss_data_func(data, iteration, writer)`` on the last rank
when a TensorBoard writer exists (not under ``--skip-train``).  So the pass, the
all-reduce, the stdout line and the JSONL record happen in the first (they must also
happen under ``--skip-train``), TensorBoard and W&B in the second.

``evaluate()`` runs once per validation set and again for the test set and after
the last iteration; the hook runs once per iteration.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch

from .capture import LogitsCapture, resolve_capture
from .config import HESNRConfig, HESNRConfigError
from .eval_pass import EvalTopology, HESNRPass, WindowedSet, plan_for_layout, plan_set
from .guard import training_state_preserved
from .logging_sinks import format_validation_line, print_validation_line, write_tensorboard, write_wandb
from .records import append_records, config_dict, make_record

log = logging.getLogger(__name__)


def topology_from_parallel_state() -> EvalTopology:
    """This rank's place in Megatron's ``parallel_state`` groups.

    The metric's groups (TP, DP x CP, CP rank, last stage) come from
    :func:`.groups.metric_groups_from_parallel_state`; the pass adds what it needs to
    feed data (TP broadcast source, DP rank for sharding windows, first stage).
    """
    from megatron.core import parallel_state as ps

    from .compat import megatron_cp_split
    from .groups import metric_groups_from_parallel_state

    groups = metric_groups_from_parallel_state()
    cp_group = ps.get_context_parallel_group() if groups.cp_size > 1 else None
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return EvalTopology(
        device=device,
        tp_group=groups.tp,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        tp_src=ps.get_tensor_model_parallel_src_rank(),
        reduce_group=groups.reduce,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        cp_group=cp_group,
        cp_rank=groups.cp_rank,
        cp_size=groups.cp_size,
        is_first_stage=ps.is_pipeline_first_stage(ignore_virtual=True),
        is_last_stage=groups.is_last_stage,
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        cp_split=megatron_cp_split(cp_group) if groups.cp_size > 1 else None,
    )


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


def checkpoint_of(args, iteration: int) -> tuple[str | None, str | None]:
    """(run directory, checkpoint path) the evaluated weights belong to.

    Megatron's layout is ``<dir>/iter_<N:07d>``.  Under ``--skip-train`` the weights are
    the loaded checkpoint (``--load``, step ``--ckpt-step`` or the loaded iteration);
    during training they are step N's, saved (if at all) under ``--save`` after the
    evaluation.  Either way the path names one step, so records of different steps
    never look like duplicates to ``hesnr report``.
    """
    skip = getattr(args, "skip_train", False)
    run_dir = getattr(args, "load", None) if skip else getattr(args, "save", None)
    if not run_dir:
        return None, None
    step = getattr(args, "ckpt_step", None) if skip else None
    return run_dir, os.path.join(run_dir, f"iter_{(step if step is not None else iteration):07d}")


def startup_plan(cfg: HESNRConfig, wset: WindowedSet, args):
    """The bucket plan from Megatron's layout flags, for the start-up log (``None`` without them).

    The pass makes the plan from its topology and model chunks; given the same layout it is
    the same (cached) plan, so the first evaluation logs it again only if the two differ.
    """
    dp = getattr(args, "data_parallel_size", None)
    if not dp:
        return None
    pp = getattr(args, "pipeline_model_parallel_size", 1) or 1
    vp = getattr(args, "virtual_pipeline_model_parallel_size", None)
    return plan_for_layout(cfg, wset, args.seq_length, dp_size=dp, pp_size=pp,
                           cp_size=getattr(args, "context_parallel_size", 1) or 1,
                           tp_size=getattr(args, "tensor_model_parallel_size", 1) or 1,
                           sequence_parallel=bool(getattr(args, "sequence_parallel", False)),
                           vp_group=(getattr(args, "microbatch_group_size_per_vp_stage", None) or pp) if vp else None)


def _is_last_rank() -> bool:
    if not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


class MegatronHESNRHook:
    """``non_loss_data_func`` / ``process_non_loss_data_func`` pair for ``pretrain()``.

    Everything Megatron-specific is injectable (``get_args``, ``topology``,
    ``forward_backward_func``, ``open_dataset``, ``get_wandb_writer``) so tests and
    other front ends can drive the same code.
    """

    def __init__(self, config: HESNRConfig | None = None, *, get_args: Callable | None = None,
                 topology: Callable[[], EvalTopology] | None = None,
                 forward_backward_func: Callable | None = None,
                 open_dataset: Callable | None = None, get_wandb_writer: Callable | None = None,
                 model_family: str = "gpt"):
        self._config = config
        self._model_family = model_family
        """``"gpt"`` or ``"hybrid"``: the model class the start-up checks look at."""
        self._get_args = get_args
        self._topology = topology or topology_from_parallel_state
        self._fb = forward_backward_func
        self._open_dataset = open_dataset or open_prepared_dataset
        self._get_wandb_writer = get_wandb_writer
        self._sets: list[tuple[WindowedSet, int]] | None = None
        self._last_iteration: int | None = None
        self._validated = False
        self._plans: dict = {}
        """Bucket plan of each set at the last evaluation (logged once, recorded in every JSONL config)."""

    # ------------------------------------------------------------- set-up
    def args(self):
        if self._get_args is None:
            from megatron.training import get_args

            self._get_args = get_args
        return self._get_args()

    @property
    def config(self) -> HESNRConfig | None:
        if self._config is None and not self._validated:
            self.validate(self.args())
        return self._config

    def validate(self, args) -> HESNRConfig | None:
        """Refuse wrong flag combinations (start-up); returns the config (None: off)."""
        from .args import validate_hesnr_args
        from .compat import MODEL_CLASSES, core_has_output_processor

        cfg = validate_hesnr_args(args, has_output_processor=core_has_output_processor(self._model_family),
                                  model_name=MODEL_CLASSES[self._model_family][0][1])
        if self._config is None:
            self._config = cfg
        elif cfg is not None and cfg != self._config:
            raise HESNRConfigError("--hesnr-data-path", "hook config differs from the parsed --hesnr-* flags")
        self._validated = True
        return self._config

    def setup(self, args=None) -> None:
        """Validate and open every set (fails fast on a missing prefix or a bad manifest)."""
        args = self.args() if args is None else args
        cfg = self.validate(args) if not self._validated else self._config
        if cfg is None or self._sets is not None:
            return
        padded = getattr(args, "padded_vocab_size", None)
        sets = []
        for spec in cfg.datasets:
            ds = self._open_dataset(spec.prefix)
            vocab = dataset_vocab_size(ds, spec.prefix)
            if padded is not None and vocab > padded:
                raise HESNRConfigError("--hesnr-data-path",
                                       f"{spec.prefix}: tokenizer vocab_size {vocab} exceeds the model's padded vocabulary {padded}")
            wset = plan_set(spec.name, ds, args.seq_length, cfg.long_policy,
                            cfg.stride_for(args.seq_length) if cfg.long_policy == "window" else None,
                            skip_empty=cfg.skip_empty_windows)
            if wset.dropped_scored_targets:
                log.warning("HE-SNR set %s: %d of %d scored tokens lie beyond --seq-length %d and are dropped "
                            "(--hesnr-long-policy truncate)", spec.name, wset.dropped_scored_targets,
                            wset.num_scored_targets, args.seq_length)
            log.info("HE-SNR set %s: %s", spec.name, wset.summary())
            plan = startup_plan(cfg, wset, args)
            if plan is not None:
                log.info("HE-SNR set %s: %s", spec.name, plan.describe())
                self._plans[spec.name] = plan
            sets.append((wset, vocab))
        self._sets = sets

    @staticmethod
    def extra_args_provider(existing: Callable | None = None) -> Callable:
        """Megatron's ``extra_args_provider`` with the ``--hesnr-*`` flags added to ``existing``."""
        from .args import add_hesnr_args, chain_extra_args_providers

        return chain_extra_args_providers(existing, add_hesnr_args)

    def wrap_dataset_provider(self, provider: Callable) -> Callable:
        """``provider`` that first runs :meth:`setup` (Megatron calls it at start-up on every rank)."""
        import functools

        @functools.wraps(provider)
        def wrapped(*a, **kw):
            self.setup()
            return provider(*a, **kw)

        for attr in ("is_distributed",):
            if hasattr(provider, attr):
                setattr(wrapped, attr, getattr(provider, attr))
        return wrapped

    # ------------------------------------------------------------ running
    @staticmethod
    def _iteration(args) -> int:
        """The iteration Megatron is evaluating at.

        Megatron's training loop sets ``args.curr_iteration`` *before* a step and
        evaluates after counting it, so an evaluation at iteration N (in the loop or
        after it) sees ``curr_iteration == N - 1``.  Under ``--skip-train`` the weights
        are the loaded checkpoint's: ``args.iteration``.
        """
        if getattr(args, "skip_train", False):
            return int(getattr(args, "iteration", 0) or 0)
        curr = getattr(args, "curr_iteration", None)
        return int(curr) + 1 if curr is not None else int(getattr(args, "iteration", 0) or 0)

    def should_run(self, args, iteration: int) -> bool:
        cfg = self.config
        if cfg is None or iteration == self._last_iteration:
            return False
        if getattr(args, "skip_train", False) or cfg.eval_interval is None:
            return True
        return iteration % cfg.eval_interval == 0

    def run(self, model) -> dict | None:
        """Evaluate every set now; reduced accumulators on the last stage (else empty dict)."""
        args = self.args()
        self.setup(args)
        cfg = self._config
        model = model if isinstance(model, (list, tuple)) else [model]
        topo = self._topology()
        fb = self._fb
        if fb is None:
            from megatron.core.pipeline_parallel import get_forward_backward_func

            fb = get_forward_backward_func()
        strategy = resolve_capture(model[-1], cfg.logits_capture, mtp=bool(getattr(args, "mtp_num_layers", None)))
        make_mask = bool(getattr(args, "create_attention_mask_in_dataloader", False))
        out = {}
        with training_state_preserved(model):
            for wset, vocab in self._sets:
                p = HESNRPass(cfg, vocab_size=vocab, seq_length=args.seq_length, topology=topo,
                              forward_backward_func=fb, capture=LogitsCapture(strategy),
                              padded_vocab_size=getattr(args, "padded_vocab_size", None),
                              make_attention_mask=make_mask)
                acc = p.run(model, wset)
                if self._plans.get(wset.name) is not p.plan:
                    log.info("HE-SNR set %s: %s", wset.name, p.plan.describe())
                self._plans[wset.name] = p.plan
                if topo.is_last_stage:
                    out[wset.name] = acc
        return out

    def non_loss_data_func(self, model):
        """Called by Megatron's ``evaluate()`` on every rank (under ``torch.no_grad``)."""
        args = self.args()
        iteration = self._iteration(args)
        if not self.should_run(args, iteration):
            return None
        self._last_iteration = iteration
        t0 = time.perf_counter()
        accs = self.run(model)
        seconds = time.perf_counter() - t0
        if not _is_last_rank():
            return None
        cfg = self._config
        consumed = getattr(args, "consumed_train_samples", None)
        run_dir, checkpoint = checkpoint_of(args, iteration)
        run_name = cfg.run_name or (os.path.basename(os.path.normpath(run_dir)) if run_dir else None)
        records, data = [], {"iteration": iteration, "consumed_samples": consumed, "sets": {}}
        for (wset, _vocab) in self._sets:
            acc = accs[wset.name]
            metrics = acc.compute()
            print_validation_line(format_validation_line(wset.name, iteration, metrics, cfg.report_categories))
            data["sets"][wset.name] = {"metrics": metrics, "hist": acc.histogram()}
            records.append(make_record(
                iteration=iteration, consumed_samples=consumed, checkpoint=checkpoint, run=run_name,
                dataset=wset.name, acc=acc,
                config=config_dict(cfg, seq_length=args.seq_length, data=wset.summary(), eval_seconds=seconds,
                                   buckets=self._plans[wset.name].summary()),
            ))
        log.info("HE-SNR evaluation at iteration %d took %.2f s", iteration, seconds)
        if cfg.jsonl:
            append_records(cfg.jsonl, records)
        return data

    def process_non_loss_data_func(self, data, iteration, writer):
        """Called on the last rank with the TensorBoard writer (never under ``--skip-train``)."""
        if not data:
            return
        if data["iteration"] != iteration:
            log.warning("HE-SNR ran as iteration %s but Megatron logs iteration %s; TensorBoard uses Megatron's",
                        data["iteration"], iteration)
        cfg = self._config
        wandb = None
        if self._get_wandb_writer is not None:
            wandb = self._get_wandb_writer()
        else:
            try:
                from megatron.training import get_wandb_writer

                wandb = get_wandb_writer()
            except ImportError:
                wandb = None
        for name, d in data["sets"].items():
            if writer is not None:
                write_tensorboard(writer, name, iteration, data.get("consumed_samples"), d["metrics"], d["hist"],
                                  cfg.report_categories)
            if wandb:
                write_wandb(wandb, name, iteration, d["metrics"], cfg.report_categories)
