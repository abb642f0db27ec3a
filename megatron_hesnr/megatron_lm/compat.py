"""Version shims for Megatron-LM / megatron-core 0.13 .. 0.19+ (keyword calls only).

``pretrain()`` changed twice:

* <= 0.17: ``pretrain(train_valid_test_dataset_provider, model_provider, model_type,
  forward_step_func, process_non_loss_data_func, extra_args_provider, args_defaults,
  get_embedding_ranks, ..., non_loss_data_func, store)`` parses the arguments itself;
* 0.18: arguments are parsed first (``parse_and_validate_args``), then
  ``pretrain(cfg_container, ...)`` with ``pretrain_cfg_container_from_args(args)``;
* 0.19+: ``model_provider`` is optional and the container takes a model config
  (``gpt_config_from_args`` / ``hybrid_config_from_args``).

``call_pretrain`` looks at the signature it is given and calls it the matching way.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)


def pretrain_style(pretrain: Callable) -> str:
    """``"args"`` (<= 0.17), ``"container"`` (0.18) or ``"container_model_cfg"`` (0.19+)."""
    params = inspect.signature(pretrain).parameters
    if "cfg_container" not in params:
        return "args"
    mp = params.get("model_provider")
    if mp is not None and mp.default is inspect.Parameter.empty:
        return "container"
    return "container_model_cfg"


def _kw(fn: Callable, **kwargs) -> dict:
    """The keyword arguments ``fn`` accepts (drops ``None`` values it does not know)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    unknown = [k for k, v in kwargs.items() if k not in params and v is not None]
    if unknown:
        raise TypeError(f"{getattr(fn, '__name__', fn)}() takes no {unknown} in this Megatron version")
    return {k: v for k, v in kwargs.items() if k in params}


def call_pretrain(
    pretrain: Callable,
    *,
    train_valid_test_dataset_provider: Callable,
    model_type: Any,
    forward_step_func: Callable,
    model_provider: Callable | None = None,
    extra_args_provider: Callable | None = None,
    args_defaults: dict | None = None,
    model_config_from_args: Callable | None = None,
    after_args_parsed: Callable | None = None,
    parse_and_validate_args: Callable | None = None,
    pretrain_cfg_container_from_args: Callable | None = None,
    **hooks,
):
    """Call Megatron's ``pretrain`` by keyword, whichever signature it has.

    ``hooks``: ``process_non_loss_data_func``, ``non_loss_data_func``,
    ``get_embedding_ranks``, ``store``, ... passed through when given.
    ``after_args_parsed(args)`` runs once the arguments exist: before ``pretrain`` (0.18+),
    or right after Megatron's ``validate_args`` inside it (<= 0.17).
    """
    style = pretrain_style(pretrain)
    common = dict(train_valid_test_dataset_provider=train_valid_test_dataset_provider, model_provider=model_provider,
                  model_type=model_type, forward_step_func=forward_step_func,
                  **{k: v for k, v in hooks.items() if v is not None})
    if style == "args":
        if after_args_parsed is not None and not check_after_megatron_validation(after_args_parsed):
            log.warning("megatron.training.initialize.validate_args not found: the --hesnr-* flags are "
                        "checked when the datasets are built")
        return pretrain(**_kw(pretrain, extra_args_provider=extra_args_provider, args_defaults=args_defaults or {},
                              **common))
    if parse_and_validate_args is None:
        from megatron.training.arguments import parse_and_validate_args
    if pretrain_cfg_container_from_args is None:
        from megatron.training.argument_utils import pretrain_cfg_container_from_args
    args = parse_and_validate_args(extra_args_provider=extra_args_provider, args_defaults=args_defaults or {})
    if after_args_parsed is not None:
        after_args_parsed(args)
    if style == "container":
        cfg = pretrain_cfg_container_from_args(args)
        if model_provider is None:
            raise TypeError("this Megatron version's pretrain() needs a model_provider")
    else:
        model_cfg = model_config_from_args(args) if model_config_from_args is not None else None
        cfg = (pretrain_cfg_container_from_args(args, model_cfg) if model_cfg is not None
               else pretrain_cfg_container_from_args(args))
    return pretrain(**_kw(pretrain, cfg_container=cfg, **common))


def check_after_megatron_validation(check: Callable) -> bool:
    """Run ``check(args)`` right after Megatron's own ``validate_args`` (core <= 0.17).

    There ``pretrain()`` parses the arguments itself, in ``initialize_megatron``, before
    the distributed set-up and the model build: wrapping the ``validate_args`` that
    module calls refuses a wrong ``--hesnr-*`` flag seconds into the job instead of after
    the checkpoint is loaded. Returns False when that module has no ``validate_args``.
    """
    import importlib

    try:
        init = importlib.import_module("megatron.training.initialize")
    except ImportError:
        return False
    orig = getattr(init, "validate_args", None)
    if orig is None:
        return False

    def validate_args(args, *a, **k):
        out = orig(args, *a, **k)
        check(args)
        return out

    init.validate_args = validate_args
    return True


#: ``parallel_state`` globals that megatron-core's ``destroy_model_parallel`` leaves set (0.16 - 0.19).
_LEFT_BY_DESTROY = ("_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP", "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP_GLOO")


def destroy_model_parallel() -> None:
    """megatron-core's ``destroy_model_parallel``, then the groups it forgets to clear.

    Left set, they point at a destroyed process group: the next ``initialize_model_parallel``
    in this process, or in a process forked from it, fails inside megatron-core.  Call this
    when a process that goes on living (a test run, a notebook, ``hesnr demo --tp 1``) is done
    with ``parallel_state``.
    """
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    for name in _LEFT_BY_DESTROY:
        if hasattr(ps, name):
            setattr(ps, name, None)
