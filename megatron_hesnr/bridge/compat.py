"""What differs between Megatron-Bridge versions, in one place.

Supported: megatron-bridge 0.3.0 (the first with ``training.callbacks``) up to the
0.7 development line (main, 2026-08); tested against the 0.3.1 wheel, the others
read from their source.  Two differences matter here:

* Where ``on_eval_end`` fires.  0.3 - 0.5 fire it in ``evaluate_and_print_results``
  *after* the validation line, TensorBoard and W&B were written, with the model
  back in train mode; 0.6+ fire it at the end of ``evaluate()``, in eval mode,
  *before* any of that, so entries added to ``total_loss_dict`` are logged by Bridge.
  :func:`eval_end_precedes_logging` reads the installed ``evaluate()`` to tell.
* Where the validation settings live: ``cfg.train.eval_interval`` / ``eval_iters`` /
  ``skip_train`` in 0.3, ``cfg.validation.*`` from 0.4 on (``train.*`` kept, deprecated).

Every Bridge symbol is imported through :func:`bridge_symbol`, so a missing or
moved one fails with a message naming it and the supported versions.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import logging
import re
from functools import partial
from typing import Any

import torch


log = logging.getLogger(__name__)

SUPPORTED_BRIDGE_VERSIONS = ">=0.3.0 (tested: 0.3.1; source-checked: 0.4.x, 0.5.x, 0.6.0, 0.7.0 main)"
#: First release whose ``on_eval_end`` fires before Bridge's loggers write.
EVAL_END_BEFORE_LOGGING_SINCE = (0, 6, 0)


class BridgeCompatError(ImportError):
    """Megatron-Bridge is missing, or lacks a symbol this adapter uses."""


def bridge_version() -> str | None:
    """The installed megatron-bridge distribution's version (``None``: not installed)."""
    from importlib import metadata

    for dist in ("megatron-bridge", "megatron_bridge"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _version_tuple(version: str | None) -> tuple[int, int, int] | None:
    """``"0.6.0rc1+abc"`` -> ``(0, 6, 0)`` (a pre-release counts as its release)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def bridge_symbol(module: str, name: str):
    """``module.name`` from Megatron-Bridge, or a :class:`BridgeCompatError` naming it."""
    where = f"{module}.{name}"
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        installed = bridge_version()
        if installed is None:
            raise BridgeCompatError(
                f"{where} is needed by megatron_hesnr.bridge, but megatron-bridge is not installed "
                f"(supported: megatron-bridge {SUPPORTED_BRIDGE_VERSIONS})") from exc
        raise BridgeCompatError(
            f"cannot import {module} (for {where}) from megatron-bridge {installed}: {exc} "
            f"(supported: {SUPPORTED_BRIDGE_VERSIONS})") from exc
    try:
        return getattr(mod, name)
    except AttributeError:
        raise BridgeCompatError(
            f"{where} is missing in megatron-bridge {bridge_version()} (moved or removed?); "
            f"megatron_hesnr.bridge supports {SUPPORTED_BRIDGE_VERSIONS}") from None


# --------------------------------------------------------------- event placement
def _fires(node: ast.AST, events: tuple[str, ...]) -> bool:
    """Whether ``node`` contains ``<x>.fire(<event>, ...)`` for one of ``events``."""
    for call in ast.walk(node):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "fire"):
            continue
        if not call.args:
            continue
        arg = call.args[0]
        if isinstance(arg, ast.Name) and arg.id in events:
            return True
        if isinstance(arg, ast.Constant) and arg.value in events:
            return True
    return False


def eval_end_placement(source: str) -> str:
    """``"evaluate"`` (before logging) or ``"evaluate_and_print_results"`` (after) for a Bridge ``eval.py``."""
    tree = ast.parse(source)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    events = ("end_event", "on_eval_end")
    for name in ("evaluate", "evaluate_and_print_results"):
        if name in funcs and _fires(funcs[name], events):
            return name
    raise BridgeCompatError("megatron.bridge.training.eval: neither evaluate() nor evaluate_and_print_results() "
                            "fires on_eval_end in this megatron-bridge version "
                            f"({bridge_version()}); supported: {SUPPORTED_BRIDGE_VERSIONS}")


def eval_end_precedes_logging() -> bool:
    """Whether the installed Bridge fires ``on_eval_end`` before it logs ``total_loss_dict``."""
    source = None
    try:
        spec = importlib.util.find_spec("megatron.bridge.training.eval")
        if spec is not None and spec.origin:
            with open(spec.origin, encoding="utf-8") as f:
                source = f.read()
    except (ImportError, OSError, ValueError) as exc:
        log.debug("cannot read megatron.bridge.training.eval: %s", exc)
    if source is not None:
        return eval_end_placement(source) == "evaluate"
    version = _version_tuple(bridge_version())
    if version is None:
        raise BridgeCompatError("megatron.bridge.training.eval is not readable and megatron-bridge's version is "
                                f"unknown; set HESNRBridgeConfig.bridge_logs_loss_dict (supported: {SUPPORTED_BRIDGE_VERSIONS})")
    return version >= EVAL_END_BEFORE_LOGGING_SINCE


# --------------------------------------------------------------- configuration
def _walk(obj: Any, path: str):
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


def container_get(container: Any, path: str):
    """A setting of Bridge's ``ConfigContainer`` across versions (``None`` when absent).

    ``validation.<x>`` is read from ``train.<x>`` when the container has no ``validation``
    (Bridge 0.3 kept the validation settings in ``TrainingConfig``).  0.4+ keep deprecated
    copies in ``train`` that their training loop ignores, so they are ignored here too.
    """
    if path == "validation":
        return getattr(container, "validation", None)
    if path.startswith("validation.") and getattr(container, "validation", None) is None:
        return _walk(container, "train." + path.split(".", 1)[1])
    return _walk(container, path)


# ----------------------------------------------------------------- process groups
def _group_size(group) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


def forward_backward_func_for(model: list, pgc, vp_size: int | None):
    """Megatron-core's forward-only schedule, called the way Bridge's ``evaluate()`` calls it.

    Bridge passes its ``ProcessGroupCollection`` and a ``P2PCommunicator`` built from it
    (so decentralised process groups work); they are bound here when the schedule takes them.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    pp_size = _group_size(getattr(pgc, "pp", None))
    params = inspect.signature(get_forward_backward_func).parameters
    fb = get_forward_backward_func(pp_size=pp_size, vp_size=vp_size) if "pp_size" in params else get_forward_backward_func()
    accepted = inspect.signature(fb).parameters
    bound = {}
    if "pg_collection" in accepted:
        bound["pg_collection"] = pgc
    if "p2p_communicator" in accepted and getattr(pgc, "pp", None) is not None:
        try:
            from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
            from megatron.core.utils import get_model_config
        except ImportError:
            P2PCommunicator = None
        if P2PCommunicator is not None:
            bound["p2p_communicator"] = P2PCommunicator(pp_group=pgc.pp, config=get_model_config(model[0]))
    return partial(fb, **bound) if bound else fb
