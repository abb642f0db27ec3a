"""The Megatron-Bridge callback: Bridge's state in, the shared HE-SNR evaluation out.

Nothing here evaluates anything itself.  At each Bridge evaluation the callback
translates Bridge's ``GlobalState`` / ``ConfigContainer`` into the shared evaluator's
:class:`~megatron_hesnr.evaluation.evaluator.EvalContext` (sequence length, padded
vocabulary, MTP, attention mask, iteration, consumed samples, checkpoint paths) and runs
:class:`~megatron_hesnr.evaluation.evaluator.HESNREvaluator` with the process groups and
forward-only schedule of Bridge's model.  So the pass, its all-reduce, the validation line,
the JSONL records and the TensorBoard / W&B output are the ones the Megatron-LM hook
produces, byte for byte in the records.

What Bridge adds: its ``on_eval_end`` hands over ``total_loss_dict``; the headline
scalars (``loss_dict_metrics``) go in there, so that Bridge >= 0.6, which logs that
dict after the callback, shows them in its own validation line and loggers.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch

from ..evaluation.capture import takes_output_processor, unwrap
from ..evaluation.evaluator import EvalContext, HESNREvaluator, Layout, checkpoint_path, is_last_rank
from ..evaluation.logging_sinks import scalars
from ..metric.stderr import STDERR_SUFFIX
from .compat import (
    BridgeCompatError,
    bridge_symbol,
    container_get,
    eval_end_precedes_logging,
    forward_backward_func_for,
)
from ..evaluation.config import HESNRConfigError
from ..evaluation.topology import topology_from_pg_collection
from .config import HESNRBridgeConfig

log = logging.getLogger(__name__)

#: Bridge events this callback handles (checked against Bridge's ``VALID_EVENTS``).
EVENTS = ("on_train_start", "on_eval_end", "on_test_end")


def _model_pg_collection(model: list):
    get_pg_collection = bridge_symbol("megatron.bridge.training.utils.pg_utils", "get_pg_collection")
    return get_pg_collection(model)


class HESNRBridgeAdapter:
    """The logic of :class:`HESNRCallback` (Bridge's ``Callback`` is mixed in lazily).

    ``HESNRCallback(config)`` or ``HESNRCallback(datasets=[...], jsonl=..., ...)``.
    ``open_dataset``, ``topology`` (``() -> Topology``) and
    ``forward_backward_func`` replace what comes from the data layer and Bridge's
    model; tests inject them, users never need to.
    """

    def __init__(self, config: HESNRBridgeConfig | None = None, *, open_dataset: Callable | None = None,
                 topology: Callable | None = None, forward_backward_func: Callable | None = None, **fields):
        if config is None:
            config = HESNRBridgeConfig(**fields)
        elif fields:
            raise TypeError(f"give either a HESNRBridgeConfig or its fields, not both (got {sorted(fields)})")
        if not isinstance(config, HESNRBridgeConfig):
            raise TypeError(f"config must be a HESNRBridgeConfig, got {type(config).__name__}")
        self.hesnr = config
        self._open_dataset = open_dataset
        self._topology = topology
        self._fb = forward_backward_func
        self._state = None
        self._evaluator: HESNREvaluator | None = None
        self._model, self._vp, self._pgc = None, None, None
        self._fb_key, self._fb_cached = None, None
        self._checked = False
        self._bridge_logs: bool | None = config.bridge_logs_loss_dict

    # ------------------------------------------------------------ Bridge events
    def on_train_start(self, context) -> None:
        """Refuse a wrong combination and open every set before the first training step."""
        if self.hesnr.enabled and getattr(context.state.train_state, "do_valid", True) is False:
            # Bridge decided at set-up that it has nothing to validate on: on_eval_end would never fire.
            raise HESNRConfigError("dataset", "Bridge has no validation data (train_state.do_valid is False), so it "
                                              "never evaluates and HE-SNR would never run: give the dataset a "
                                              "validation split")
        self._startup(context)
        if self.hesnr.enabled and self.hesnr.eval_at_start:
            self._evaluate_at_start(context)

    def on_eval_end(self, context) -> None:
        self._evaluate(context)

    def on_test_end(self, context) -> None:
        self._evaluate(context)

    # ------------------------------------------------------------ translation
    def eval_context(self, context) -> EvalContext:
        """Bridge's state and settings as the evaluator's context."""
        state, cfg = context.state, context.state.cfg
        model = context.model if isinstance(context.model, (list, tuple)) else [context.model]
        padded = getattr(unwrap(model[0]), "vocab_size", None)
        skip_train = bool(container_get(cfg, "validation.skip_train"))
        # Bridge evaluates after counting the step: train_state.step is the iteration (also under
        # skip_train, where it is the loaded checkpoint's, stored under checkpoint.load).
        iteration = int(state.train_state.step)
        if skip_train:
            step = container_get(cfg, "checkpoint.ckpt_step")
            run_dir, checkpoint = checkpoint_path(container_get(cfg, "checkpoint.load"),
                                                  step if step is not None else iteration)
        else:
            run_dir, checkpoint = checkpoint_path(container_get(cfg, "checkpoint.save"), iteration)
        return EvalContext(iteration=iteration, consumed_samples=int(state.train_state.consumed_train_samples),
                           seq_length=container_get(cfg, "model.seq_length"),
                           padded_vocab_size=padded if isinstance(padded, int) else None,
                           run_dir=run_dir, checkpoint=checkpoint, skip_train=skip_train,
                           mtp=bool(container_get(cfg, "model.mtp_num_layers")),
                           make_attention_mask=bool(container_get(cfg, "dataset.create_attention_mask")),
                           has_output_processor=takes_output_processor(model[-1]),
                           model_name=type(unwrap(model[-1])).__name__)

    def start_context(self, context) -> EvalContext:
        """The context before the first step: the loaded step (0 for a base model), the run of
        ``checkpoint.save``, the loaded checkpoint (``checkpoint.load/iter_N``; for a base model
        ``checkpoint.pretrained_checkpoint``, else none: random initialisation)."""
        cfg = context.state.cfg
        ctx = self.eval_context(context)
        if ctx.iteration > 0:
            checkpoint = checkpoint_path(container_get(cfg, "checkpoint.load"), ctx.iteration)[1]
        else:
            checkpoint = container_get(cfg, "checkpoint.pretrained_checkpoint")
        return dataclasses.replace(ctx, checkpoint=checkpoint)

    def _layout(self, context) -> Layout | None:
        """The model's parallel layout, for the start-up bucket plan (``None`` with injected groups)."""
        if self._pgc is None:
            return None
        topo = topology_from_pg_collection(self._pgc)
        cfg = context.state.cfg
        vp = container_get(cfg, "model.virtual_pipeline_model_parallel_size")
        group = container_get(cfg, "model.microbatch_group_size_per_vp_stage")
        return Layout(dp_size=topo.dp_size, pp_size=topo.pp_size, cp_size=topo.cp_size, tp_size=topo.tp_size,
                      sequence_parallel=bool(container_get(cfg, "model.sequence_parallel")),
                      vp_group=(group or topo.pp_size) if vp else None)

    def _refresh_groups(self, context) -> None:
        """Read the model's process groups now: Bridge >= 0.7 may rebind CP groups for evaluation
        (``eval_context_parallel_rebinding``), so they are not cached across evaluations."""
        self._model = list(context.model) if isinstance(context.model, (list, tuple)) else [context.model]
        self._vp = container_get(context.state.cfg, "model.virtual_pipeline_model_parallel_size")
        if self._topology is None or self._fb is None:
            self._pgc = _model_pg_collection(self._model)

    def _current_topology(self):
        return topology_from_pg_collection(self._pgc)

    def _current_forward_backward(self, **kwargs):
        if self._fb_key is not self._pgc:
            self._fb_cached = forward_backward_func_for(self._model, self._pgc, self._vp)
            self._fb_key = self._pgc
        return self._fb_cached(**kwargs)

    def _evaluator_for(self) -> HESNREvaluator:
        if self._evaluator is None:
            self._evaluator = HESNREvaluator(self.hesnr.hesnr_config(), topology=self._topology or self._current_topology,
                                             forward_backward_func=self._fb or self._current_forward_backward,
                                             open_dataset=self._open_dataset)
        return self._evaluator

    def _startup(self, context) -> None:
        if self._checked or not self.hesnr.enabled:
            return
        self._state = context.state
        self.hesnr.check_against_container(context.state.cfg)
        self._refresh_groups(context)
        self._evaluator_for().setup(dataclasses.replace(self.eval_context(context), layout=self._layout(context)))
        if self._bridge_logs is None:
            self._bridge_logs = eval_end_precedes_logging()
        if is_last_rank():
            log.info("HE-SNR: megatron-bridge %s on_eval_end; HE-SNR scalars %s",
                     "logs total_loss_dict after" if self._bridge_logs else "fires after logging in",
                     "join Bridge's validation line" if self._bridge_logs else "are logged by megatron-hesnr only")
        self._checked = True

    # ------------------------------------------------------------ evaluation
    def _evaluate_at_start(self, context) -> None:
        """``eval_at_start``: the loaded weights, before Bridge's first step (``on_train_start``)."""
        ctx = self.start_context(context)
        self._refresh_groups(context)
        data = self._evaluator_for().evaluate_at_start(context.model, ctx)  # every rank; data on the last
        if data:
            self._evaluator.log(data, ctx.iteration, context.state.tensorboard_logger, context.state.wandb_logger)

    def _evaluate(self, context) -> None:
        if not self.hesnr.enabled:
            return
        self._startup(context)  # under validation.skip_train on_train_start never fires
        self._state = context.state
        ctx = self.eval_context(context)
        self._refresh_groups(context)
        evaluator = self._evaluator_for()
        data = evaluator.evaluate(context.model, ctx)  # every rank; data only on the last rank
        if not data:
            return
        # Bridge writes TensorBoard only when training (write_to_tensorboard=not skip_train).
        writer = None if ctx.skip_train else context.state.tensorboard_logger
        evaluator.log(data, ctx.iteration, writer, self._state.wandb_logger)
        loss_dict = getattr(context, "total_loss_dict", None)
        if self._bridge_logs and self.hesnr.loss_dict_metrics and loss_dict is not None:
            loss_dict.update(self.loss_dict_entries(data, loss_dict))

    def loss_dict_entries(self, data: dict, loss_dict: dict) -> dict:
        """``{"hesnr/<set>/<category>/<metric>": 0-dim float tensor}`` for the finite
        ``loss_dict_metrics``, each followed by its standard error (``.../<metric>_stderr``).

        Bridge divides each of its ``[sum, count]`` pairs before ``on_eval_end``, so its
        entries are already 0-dim tensors that it reads with ``.item()``; ours match them.
        A NaN metric (e.g. no high-entropy token) is left out: the evaluator's log says which.
        """
        device = next((v.device for v in loss_dict.values() if isinstance(v, torch.Tensor)), None)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        wanted = set(self.hesnr.loss_dict_metrics)
        out = {}
        for name, d in data["sets"].items():
            for tag, value in scalars(name, d["metrics"], self.hesnr.report_categories).items():
                if tag.rsplit("/", 1)[1].removesuffix(STDERR_SUFFIX) in wanted:
                    out[tag] = torch.tensor(value, dtype=torch.float32, device=device)
        return out


_CALLBACK_CLASS = None


def callback_class():
    """``HESNRCallback``: :class:`HESNRBridgeAdapter` on Bridge's ``Callback`` (built on first use)."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        base = bridge_symbol("megatron.bridge.training.callbacks", "Callback")
        valid = bridge_symbol("megatron.bridge.training.callbacks", "VALID_EVENTS")
        missing = [e for e in EVENTS if e not in valid or not hasattr(base, e)]
        if missing:
            raise BridgeCompatError(f"megatron.bridge.training.callbacks.Callback has no {missing} events "
                                    "in this megatron-bridge version")
        _CALLBACK_CLASS = type("HESNRCallback", (HESNRBridgeAdapter, base), {
            "__module__": "megatron_hesnr.bridge",
            "__doc__": "HE-SNR at every Megatron-Bridge evaluation: "
                       "``pretrain(cfg, forward_step, callbacks=[HESNRCallback(config)])``.",
        })
    return _CALLBACK_CLASS
