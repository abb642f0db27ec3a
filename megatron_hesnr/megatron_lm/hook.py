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

import dataclasses
import logging
from typing import Callable

from ..evaluation.config import HESNRConfig, HESNRConfigError
from ..evaluation.evaluator import EvalContext, HESNREvaluator, Layout, checkpoint_path
from ..evaluation.topology import Topology
from .topology import topology_from_parallel_state

log = logging.getLogger(__name__)


def checkpoint_of(args, iteration: int) -> tuple[str | None, str | None]:
    """(run directory, checkpoint path) the evaluated weights belong to.

    Megatron's layout is ``<dir>/iter_<N:07d>``.  Under ``--skip-train`` the weights are
    the loaded checkpoint (``--load``, step ``--ckpt-step`` or the loaded iteration);
    during training they are step N's, saved (if at all) under ``--save`` after the
    evaluation.  Either way the path names one step, so records of different steps
    never look like duplicates to ``hesnr report``.
    """
    skip = getattr(args, "skip_train", False)
    step = getattr(args, "ckpt_step", None) if skip else None
    return checkpoint_path(getattr(args, "load", None) if skip else getattr(args, "save", None),
                           step if step is not None else iteration)


def layout_of(args) -> Layout | None:
    """Megatron's layout flags, for the start-up bucket plan (``None`` without them)."""
    dp = getattr(args, "data_parallel_size", None)
    if not dp:
        return None
    pp = getattr(args, "pipeline_model_parallel_size", 1) or 1
    vp = getattr(args, "virtual_pipeline_model_parallel_size", None)
    return Layout(dp_size=dp, pp_size=pp, cp_size=getattr(args, "context_parallel_size", 1) or 1,
                  tp_size=getattr(args, "tensor_model_parallel_size", 1) or 1,
                  sequence_parallel=bool(getattr(args, "sequence_parallel", False)),
                  vp_group=(getattr(args, "microbatch_group_size_per_vp_stage", None) or pp) if vp else None)


def eval_context(args, model_family: str | None = None) -> EvalContext:
    """Megatron-LM's ``args`` as the evaluator's context (``model_family``: ``"gpt"`` / ``"hybrid"``, for
    the start-up line's capture; ``None``: not known)."""
    iteration = MegatronHESNRHook._iteration(args)
    run_dir, checkpoint = checkpoint_of(args, iteration)
    return EvalContext(iteration=iteration, consumed_samples=getattr(args, "consumed_train_samples", None),
                       seq_length=args.seq_length, padded_vocab_size=getattr(args, "padded_vocab_size", None),
                       run_dir=run_dir, checkpoint=checkpoint, skip_train=bool(getattr(args, "skip_train", False)),
                       mtp=bool(getattr(args, "mtp_num_layers", None)),
                       make_attention_mask=bool(getattr(args, "create_attention_mask_in_dataloader", False)),
                       layout=layout_of(args), **_model_class_facts(model_family))


def _model_class_facts(family: str | None) -> dict:
    if family is None:
        return {}
    from ..evaluation.capture import MODEL_CLASSES, core_has_output_processor

    return {"has_output_processor": core_has_output_processor(family), "model_name": MODEL_CLASSES[family][0][1]}


def start_context(args) -> EvalContext:
    """The context of the evaluation before the first step: the loaded iteration (``args.iteration``,
    0 for a base model), the run of ``--save``, the loaded checkpoint (``<load>/iter_N``; for a base
    model ``--pretrained-checkpoint``, else ``--load``, else none: random initialisation)."""
    iteration = int(getattr(args, "iteration", 0) or 0)
    if iteration > 0:
        checkpoint = checkpoint_path(getattr(args, "load", None), iteration)[1]
    else:
        checkpoint = getattr(args, "pretrained_checkpoint", None) or getattr(args, "load", None)
    return dataclasses.replace(eval_context(args), iteration=iteration, checkpoint=checkpoint,
                               run_dir=getattr(args, "save", None))


class MegatronHESNRHook:
    """``non_loss_data_func`` / ``process_non_loss_data_func`` pair for ``pretrain()``.

    Everything Megatron-specific is injectable (``get_args``, ``topology``,
    ``forward_backward_func``, ``open_dataset``, ``get_wandb_writer``) so tests and
    other front ends can drive the same code.
    """

    def __init__(self, config: HESNRConfig | None = None, *, get_args: Callable | None = None,
                 topology: Callable[[], Topology] | None = None,
                 forward_backward_func: Callable | None = None,
                 open_dataset: Callable | None = None, get_wandb_writer: Callable | None = None,
                 model_family: str = "gpt"):
        self._config = config
        self._model_family = model_family
        """``"gpt"`` or ``"hybrid"``: the model class the start-up checks look at."""
        self._get_args = get_args
        self._topology = topology or topology_from_parallel_state
        self._fb = forward_backward_func
        self._open_dataset = open_dataset
        self._get_wandb_writer = get_wandb_writer
        self._validated = False
        self.evaluator: HESNREvaluator | None = None
        """The shared evaluator, made at :meth:`setup` once the config is known."""

    # Views of the evaluator's state (tests and logs look at them).
    @property
    def _sets(self):
        return self.evaluator.sets if self.evaluator else None

    @property
    def _plans(self) -> dict:
        return self.evaluator.plans if self.evaluator else {}

    @property
    def _last_iteration(self):
        return self.evaluator.last_iteration if self.evaluator else None

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
        from ..evaluation.capture import MODEL_CLASSES, core_has_output_processor

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
        if cfg is None or self.evaluator is not None:
            return
        evaluator = HESNREvaluator(cfg, topology=self._topology, forward_backward_func=self._forward_backward,
                                   open_dataset=self._open_dataset)
        evaluator.setup(eval_context(args, self._model_family))
        self.evaluator = evaluator

    def _forward_backward(self, **kwargs):
        fb = self._fb
        if fb is None:
            from megatron.core.pipeline_parallel import get_forward_backward_func

            fb = get_forward_backward_func()
        return fb(**kwargs)

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
            if self.config is not None and self.config.eval_at_start:
                from .start_eval import arm

                arm(self.evaluate_at_start)
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

    def non_loss_data_func(self, model):
        """Called by Megatron's ``evaluate()`` on every rank (under ``torch.no_grad``)."""
        args = self.args()
        if self.config is None:
            return None
        self.setup(args)
        return self.evaluator.evaluate(model, eval_context(args))

    def evaluate_at_start(self, model) -> None:
        """``--hesnr-eval-at-start``: the loaded weights before the first step (see :mod:`.start_eval`);
        the records at the loaded iteration, TensorBoard and W&B as after an evaluation."""
        args = self.args()
        if self.config is None:
            return
        self.setup(args)
        ctx = start_context(args)
        data = self.evaluator.evaluate_at_start(model, ctx)
        if data:
            writer = None
            try:
                from megatron.training import get_tensorboard_writer

                writer = get_tensorboard_writer()
            except ImportError:
                pass
            self.process_non_loss_data_func(data, ctx.iteration, writer)

    def process_non_loss_data_func(self, data, iteration, writer):
        """Called on the last rank with the TensorBoard writer (never under ``--skip-train``)."""
        if not data:
            return
        wandb = None
        if self._get_wandb_writer is not None:
            wandb = self._get_wandb_writer()
        else:
            try:
                from megatron.training import get_wandb_writer

                wandb = get_wandb_writer()
            except ImportError:
                wandb = None
        self.evaluator.log(data, iteration, writer, wandb)
