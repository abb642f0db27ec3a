"""Taking the per-token statistics, or the vocab-parallel logits, out of any Megatron language model.

The evaluation needs only what the output layer produces, so nothing here depends
on the model class (``GPTModel``, ``HybridModel``, wrapped in DDP / Float16Module):

* ``chunked`` (``GPTModel`` in megatron-core >= 0.18; ``auto`` there): an ``output_processor``
  runs the output layer a chunk of positions at a time and returns the per-token statistics
  ``[s, b, 6]`` (:mod:`.chunked_stats`); the logits of the whole micro-batch never exist.
* ``output_processor`` (``GPTModel`` in megatron-core >= 0.18): ``forward(..., output_processor=f)``
  hands ``f`` the final hidden states and the output layer; ``f`` runs the output
  layer itself and returns logits ``[s, b, V/TP]`` without the ``[b, s]`` transposed
  copy that ``labels=None`` makes.
* ``labels_none``: ``forward(..., labels=None)`` returns logits ``[b, s, V/TP]``.
* ``output_layer_hook``: ``forward`` with labels (so multi-token prediction before
  core 0.19 works) and a forward hook on ``output_layer`` that keeps its last call,
  which is the main head (MTP heads run before it).  It keeps a copy of the logits,
  because the loss computed after it may overwrite them in place.

A ``Float16Module`` wrapper upcasts outputs of the last stage to fp32 unless told
``fp32_output=False``; that would double the logits' memory, so it is told.
"""
from __future__ import annotations

import inspect

import torch


def unwrap(module):
    """The innermost model under DDP / Float16Module style ``.module`` wrappers."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _fp32_output_kwargs(model) -> dict:
    """``{'fp32_output': False}`` when some wrapper's forward takes it (Float16Module)."""
    m = model
    while True:
        if _accepts(type(m).forward, "fp32_output"):
            return {"fp32_output": False}
        inner = getattr(m, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return {}
        m = inner


def takes_output_processor(model) -> bool:
    """Whether ``model``'s (innermost) ``forward`` takes ``output_processor``."""
    return _accepts(type(unwrap(model)).forward, "output_processor")


def resolve_capture(model, requested: str = "auto", *, mtp: bool = False) -> str:
    """The strategy to use for ``model`` (a chunk, possibly wrapped)."""
    inner = unwrap(model)
    has_proc = takes_output_processor(inner)
    if requested == "auto":
        return planned_capture("auto", has_proc, mtp=mtp)
    if requested in ("output_processor", "chunked") and not has_proc:
        raise ValueError(f"{type(inner).__name__}.forward has no output_processor (GPTModel in megatron-core >= 0.18 has it)")
    if requested == "output_layer_hook" and getattr(inner, "post_process", True) and not hasattr(inner, "output_layer"):
        raise ValueError(f"{type(inner).__name__} has no output_layer to hook")
    return requested


def planned_capture(requested: str, has_output_processor: bool, *, mtp: bool = False) -> str:
    """The capture ``requested`` (``auto`` or a name) gives a model class with / without ``output_processor``."""
    if requested != "auto":
        return requested
    if has_output_processor:
        return "chunked"
    return "output_layer_hook" if mtp else "labels_none"


def describe_capture(requested: str, chunk, *, has_output_processor: bool, model_name: str = "GPTModel",
                     mtp: bool = False) -> str:
    """The start-up line's words on the capture and the chunk."""
    from .chunked_stats import LOGITS_BUDGET_BYTES

    strategy = planned_capture(requested, has_output_processor, mtp=mtp)
    if strategy == "chunked":
        size = (f"{LOGITS_BUDGET_BYTES // 2**20} MiB of logits per rank" if chunk == "auto" else f"{chunk} positions")
        return (f"logits capture chunked (statistics made inside {model_name}'s output_processor, chunks of "
                f"{size}; the whole logits are never built)")
    why = "" if has_output_processor else f"; {model_name}.forward takes no output_processor"
    return (f"logits capture {strategy} (a micro-batch's whole logits [s, b, V/TP] are built"
            f"{why}; --hesnr-logits-chunk does not apply)")


def _skip_mtp_kwargs(model) -> dict:
    """``{'compute_mtp_loss': False}`` when the model's forward takes it (HybridModel on main):
    the evaluation needs only the main head, so the MTP layers and their loss are not run."""
    return {"compute_mtp_loss": False} if _accepts(type(unwrap(model)).forward, "compute_mtp_loss") else {}


def _output_processor(*, hidden_states, output_layer, output_weight=None, scale_logits=None, **_unused):
    # runtime_gather_output=False: keep this rank's vocabulary shard, as the loss does.
    logits, _ = output_layer(hidden_states, weight=output_weight, runtime_gather_output=False)
    if scale_logits is not None:
        logits = scale_logits(logits)
    return logits


class LogitsCapture:
    """Runs one forward of a model chunk and returns ``(output, layout)``.

    ``layout`` is ``"bs"`` or ``"sb"``: the order of the leading dims of the logits on
    the last stage, or ``"stats"``: packed per-token statistics ``[s, b, 6]``
    (:meth:`~megatron_hesnr.metric.token_stats.TokenStats.pack`); other stages get the chunk's
    output (hidden states) unchanged.
    """

    def __init__(self, strategy: str):
        self.strategy = strategy

    @property
    def makes_stats(self) -> bool:
        """Whether the model returns per-token statistics (it then needs a :class:`~.chunked_stats.StatsRequest`)."""
        return self.strategy == "chunked"

    def __call__(self, model, tokens, position_ids, attention_mask, labels, stats=None):
        """``stats``: the :class:`~.chunked_stats.StatsRequest` of this micro-batch (``chunked`` only)."""
        kwargs = {**_fp32_output_kwargs(model), **_skip_mtp_kwargs(model)}
        if self.strategy == "chunked":
            if stats is None:
                raise ValueError("the chunked capture needs the micro-batch's StatsRequest")
            from .chunked_stats import chunked_token_stats

            def processor(*, hidden_states, output_layer, output_weight=None, scale_logits=None, **_unused):
                return chunked_token_stats(hidden_states=hidden_states, output_layer=output_layer, request=stats,
                                           output_weight=output_weight, scale_logits=scale_logits)

            return model(tokens, position_ids, attention_mask, labels=None, output_processor=processor,
                         **kwargs), "stats"
        if self.strategy == "output_processor":
            out = model(tokens, position_ids, attention_mask, labels=None,
                        output_processor=_output_processor, **kwargs)
            return out, "sb"
        if self.strategy == "labels_none":
            return model(tokens, position_ids, attention_mask, labels=None, **kwargs), "bs"
        if self.strategy == "output_layer_hook":
            inner = unwrap(model)
            layer = getattr(inner, "output_layer", None)
            if layer is None or not getattr(inner, "post_process", True):
                return model(tokens, position_ids, attention_mask, labels=labels, **kwargs), "sb"
            seen = []

            def keep_last(_module, _inputs, output):
                logits = output[0] if isinstance(output, tuple) else output
                # A copy: the loss that follows may overwrite its input in place
                # (Megatron's fp32 vocab-parallel CE, TE's fused CE write into it).
                seen[:] = [logits.detach().clone()]

            handle = layer.register_forward_hook(keep_last)
            try:
                model(tokens, position_ids, attention_mask, labels=labels, **kwargs)
            finally:
                handle.remove()
            if not seen:
                raise RuntimeError(f"{type(inner).__name__}.output_layer was not called in forward")
            return seen[0], "sb"
        raise ValueError(f"unknown logits capture {self.strategy!r}")


#: model family -> (module, class) candidates, newest first (HybridModel was MambaModel before 0.18)
MODEL_CLASSES = {
    "gpt": (("megatron.core.models.gpt", "GPTModel"),),
    "hybrid": (("megatron.core.models.hybrid", "HybridModel"), ("megatron.core.models.mamba", "MambaModel")),
}


def model_class(family: str = "gpt"):
    """The installed megatron-core's model class of ``family`` (``None`` if absent)."""
    import importlib

    for module, name in MODEL_CLASSES[family]:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def core_has_output_processor(family: str = "gpt") -> bool:
    """Whether the installed model class's ``forward`` takes ``output_processor``.

    ``GPTModel`` has it since megatron-core 0.18; ``HybridModel`` has none (0.19, main).
    """
    cls = model_class(family)
    return cls is not None and "output_processor" in inspect.signature(cls.forward).parameters
