"""The HE-SNR settings of a Megatron-Bridge run, in Bridge's config style.

:class:`HESNRBridgeConfig` *is* the Megatron-LM :class:`~megatron_hesnr.evaluation.config.HESNRConfig`
(same fields, defaults and checks, so both front ends evaluate the same way and
write the same records) plus the few fields only Bridge needs.  A wrong value is
refused in ``__post_init__`` with a message that names the field (and the
``--hesnr-*`` flag it corresponds to); :meth:`HESNRBridgeConfig.check_against_container`
refuses combinations with Bridge's own ``ConfigContainer`` at start-up (the shared
:meth:`HESNRConfig.check_against` on the container's settings, in Bridge's names).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..evaluation.config import EvalDataset, HESNRConfig, HESNRConfigError, HostSettings, parse_data_specs
from ..evaluation.logging_sinks import LINE_METRICS
from .compat import container_get

def _datasets(value) -> tuple[EvalDataset, ...]:
    """Sets given as ``EvalDataset``s, ``"NAME=PREFIX"`` strings or a ``{name: prefix}`` mapping."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    specs = []
    for item in value:
        if isinstance(item, EvalDataset):
            specs.append(f"{item.name}={item.prefix}")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            specs.append(f"{item[0]}={item[1]}")
        elif isinstance(item, str):
            specs.append(item)
        else:
            raise HESNRConfigError("--hesnr-data-path", f"cannot read a set from {item!r} (use 'NAME=PREFIX')")
    return parse_data_specs(specs)


@dataclass(kw_only=True)
class HESNRBridgeConfig(HESNRConfig):
    """HE-SNR evaluation inside Megatron-Bridge's ``evaluate()`` (see :mod:`megatron_hesnr.bridge`).

    Every field of :class:`HESNRConfig` keeps its meaning; ``eval_interval`` and
    ``eval_iters`` relate to Bridge's ``validation.eval_interval`` (``train.eval_interval``
    before Bridge 0.4) instead of Megatron's flags.  ``datasets`` also accepts
    ``"NAME=PREFIX"`` strings or a ``{name: prefix}`` mapping; ``metric`` (k, threshold, bins,
    category names) an ``AccumulatorConfig`` or a mapping of its fields.  Errors name the
    field as written here, ``HESNRBridgeConfig.metric.k (--hesnr-k)``.
    """

    loss_dict_metrics: tuple[str, ...] = ("hesnr", "he_ppl")
    """Metrics put into Bridge's ``total_loss_dict`` (its validation line, TensorBoard,
    W&B, MLflow, Comet) for 'all' and each report category, as ``hesnr/<set>/<category>/<metric>``.
    Bridge prints a "PPL" beside every entry, which means nothing for these keys.
    Only Bridge >= 0.6 logs them (older versions fire ``on_eval_end`` after logging);
    ``()`` keeps Bridge's line as it is."""
    bridge_logs_loss_dict: bool | None = None
    """Whether Bridge logs ``total_loss_dict`` after ``on_eval_end``; ``None``: detected
    from the installed Bridge (see :func:`megatron_hesnr.bridge.compat.eval_end_precedes_logging`)."""

    def __post_init__(self):
        try:
            self.datasets = _datasets(self.datasets)
            super().__post_init__()
        except HESNRConfigError as exc:
            raise self._named(exc) from None
        self.loss_dict_metrics = tuple(self.loss_dict_metrics)
        unknown = [m for m in self.loss_dict_metrics if m not in LINE_METRICS]
        if unknown:
            raise HESNRConfigError("--hesnr-loss-dict-metrics", f"unknown {unknown}; known: {list(LINE_METRICS)}",
                                   field="loss_dict_metrics", name="HESNRBridgeConfig.loss_dict_metrics")

    @staticmethod
    def _named(exc: HESNRConfigError) -> HESNRConfigError:
        """``exc`` named by our field, as a Bridge user writes it: ``HESNRBridgeConfig.metric.k (--hesnr-k)``."""
        if exc.field is None:
            return exc
        name = f"HESNRBridgeConfig.{exc.field}" + (f" ({exc.flag})" if exc.flag else "")
        return HESNRConfigError(exc.flag, exc.message, field=exc.field, name=name)

    def finalize(self) -> None:
        """Re-run the checks after fields were overridden (Bridge configs' ``finalize`` contract)."""
        self.__post_init__()

    def hesnr_config(self) -> HESNRConfig:
        """The shared evaluation settings alone (what the JSONL records and the Megatron-LM hook use)."""
        return HESNRConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(HESNRConfig) if f.init})

    def check_against_container(self, container: Any, *, has_output_processor: bool | None = None) -> None:
        """Refuse combinations with Bridge's ``ConfigContainer`` (call before ``pretrain``)."""
        if not self.enabled:
            return
        if has_output_processor is None:
            from ..evaluation.capture import core_has_output_processor

            has_output_processor = core_has_output_processor()
        self.check_against(host_settings(container, has_output_processor=has_output_processor))


def host_settings(container: Any, *, has_output_processor: bool) -> HostSettings:
    """Bridge's ``ConfigContainer`` as the settings :meth:`HESNRConfig.check_against` reads, in Bridge's names."""
    # Bridge >= 0.4 has a ValidationConfig; 0.3 keeps these in TrainingConfig.
    prefix = "validation." if container_get(container, "validation") is not None else "train."
    return HostSettings(
        seq_length=container_get(container, "model.seq_length"),
        eval_interval=container_get(container, "validation.eval_interval"),
        eval_iters=container_get(container, "validation.eval_iters"),
        skip_train=bool(container_get(container, "validation.skip_train")),
        mtp=bool(container_get(container, "model.mtp_num_layers")),
        context_parallel_size=container_get(container, "model.context_parallel_size") or 1,
        has_output_processor=has_output_processor,
        host="Bridge",
        names={"seq_length": "model.seq_length", "eval_interval": f"{prefix}eval_interval",
               "eval_iters": f"{prefix}eval_iters", "context_parallel_size": "model.context_parallel_size",
               "mtp": "model.mtp_num_layers"},
        field_name=lambda name: f"HESNRBridgeConfig.{name}",
    )

def add_hesnr_bridge_args(parser):
    """The Megatron-LM ``--hesnr-*`` flags plus the Bridge-only ones (for Bridge launch scripts)."""
    from ..evaluation.flags import add_hesnr_args

    add_hesnr_args(parser)
    g = parser.add_argument_group(title="HE-SNR under Megatron-Bridge")
    g.add_argument("--hesnr-loss-dict-metrics", nargs="*", default=["hesnr", "he_ppl"], metavar="METRIC",
                   help="Metrics added to Bridge's total_loss_dict (its validation line and loggers, Bridge >= 0.6); "
                        f"any of {list(LINE_METRICS)}, none to add nothing.")
    return parser


def bridge_config_from_args(args) -> HESNRBridgeConfig | None:
    """:class:`HESNRBridgeConfig` of parsed ``--hesnr-*`` flags (``None``: no ``--hesnr-data-path``)."""
    from ..evaluation.flags import config_from_args

    shared = config_from_args(args)
    if shared is None:
        return None
    fields = {f.name: getattr(shared, f.name) for f in dataclasses.fields(HESNRConfig) if f.init}
    try:
        return HESNRBridgeConfig(loss_dict_metrics=tuple(args.hesnr_loss_dict_metrics or ()), **fields)
    except HESNRConfigError as exc:  # named by its flag: this config came from the command line
        raise HESNRConfigError(exc.flag, exc.message, field=exc.field) from None
