"""The demo GPT as the evaluator sees a Megatron model: ``GPTModel.forward``'s signature,
this rank's shard of the vocabulary-parallel output layer.

:class:`MegatronStyleGPT` takes ``forward(input_ids, position_ids, attention_mask, labels=None)``
and returns logits ``[b, s, V / TP]`` like ``GPTModel`` with ``labels=None`` (the
evaluator's ``labels_none`` capture) or, given ``output_processor=f`` as ``GPTModel`` (core >= 0.18),
what ``f`` makes of the final hidden states and the output layer (the ``chunked`` capture: the
statistics a chunk of positions at a time, the evaluator's default), has the ``config`` / ``model_type`` /
``set_input_tensor`` that megatron-core's schedule reads, and holds the output layer
split over tensor-parallel ranks: megatron-core's ``ColumnParallelLinear`` (the layer
``GPTModel`` uses) when it is installed, this rank's rows of the weight otherwise.
The transformer trunk is replicated on every rank (it is not what is being shown).
"""
from __future__ import annotations

import torch

from .gpt import TinyGPT


def has_megatron_core() -> bool:
    try:
        import megatron.core.tensor_parallel  # noqa: F401
    except ImportError:
        return False
    return True


def rows_of_rank(weight: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Tensor-parallel rank ``rank``'s contiguous rows of an output weight split ``size`` ways."""
    rows = weight.shape[0] // size
    return weight[rank * rows:(rank + 1) * rows]


class SlicedOutputLayer(torch.nn.Module):
    """This rank's contiguous rows of the output weight (without megatron-core)."""

    def __init__(self, weight: torch.Tensor, rank: int, size: int):
        super().__init__()
        self.register_buffer("weight", rows_of_rank(weight, rank, size).detach().clone())

    def forward(self, hidden_sbh: torch.Tensor) -> torch.Tensor:
        return hidden_sbh @ self.weight.t()


class MegatronOutputLayer(torch.nn.Module):
    """megatron-core's ``ColumnParallelLinear`` as ``GPTModel.output_layer`` (no gather), loaded
    with this rank's rows; needs ``parallel_state`` initialised with ``tensor_model_parallel_size=tp``."""

    def __init__(self, weight: torch.Tensor, config):
        super().__init__()
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import ColumnParallelLinear

        self.layer = ColumnParallelLinear(weight.shape[1], weight.shape[0], config=config,
                                          init_method=torch.nn.init.zeros_, bias=False, gather_output=False,
                                          skip_bias_add=False, tp_group=ps.get_tensor_model_parallel_group())
        with torch.no_grad():
            self.layer.weight.copy_(rows_of_rank(weight, ps.get_tensor_model_parallel_rank(),
                                                 ps.get_tensor_model_parallel_world_size()))

    def forward(self, hidden_sbh: torch.Tensor) -> torch.Tensor:
        out, _ = self.layer(hidden_sbh)
        return out


class LinearContract:
    """The demo's output layer called as ``ColumnParallelLinear`` is (what an ``output_processor`` is handed):
    ``(hidden, weight=None, runtime_gather_output=None) -> (logits shard, None)``, ``.weight`` this rank's rows."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer
        self.weight = layer.layer.weight if isinstance(layer, MegatronOutputLayer) else layer.weight

    def __call__(self, hidden_sbh, weight=None, runtime_gather_output=None):
        if weight is not None or runtime_gather_output:
            raise ValueError("the demo's output layer has its own weight and never gathers its output")
        return self.layer(hidden_sbh), None


def megatron_config(tp: int, dtype: torch.dtype = torch.float32):
    """The ``ModelParallelConfig`` the output layer and megatron-core's schedule read."""
    from megatron.core.model_parallel_config import ModelParallelConfig

    return ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True, params_dtype=dtype,
                               pipeline_dtype=dtype)


class MegatronStyleGPT(torch.nn.Module):
    """One pipeline stage (the whole model) with ``GPTModel``'s forward signature."""

    def __init__(self, gpt: TinyGPT, output_layer: torch.nn.Module, config=None):
        super().__init__()
        self.gpt = gpt
        self.output_layer = output_layer
        self.config = config
        """megatron-core's ``ModelParallelConfig`` (what its schedule reads), ``None`` without it."""
        if config is not None:
            from megatron.core.enums import ModelType

            self.model_type = ModelType.encoder_or_decoder

    @classmethod
    def for_rank(cls, gpt: TinyGPT, *, tp_rank: int, tp_size: int, megatron: bool) -> "MegatronStyleGPT":
        """``gpt`` with this rank's output layer: ``ColumnParallelLinear`` if ``megatron``, else a slice."""
        if megatron:
            config = megatron_config(tp_size, gpt.output_weight.dtype)
            return cls(gpt, MegatronOutputLayer(gpt.output_weight, config), config)
        return cls(gpt, SlicedOutputLayer(gpt.output_weight, tp_rank, tp_size))

    def set_input_tensor(self, tensor) -> None:
        """A single stage: nothing arrives from a previous one (the schedule calls it anyway)."""

    def forward(self, input_ids, position_ids, attention_mask, labels=None, output_processor=None):
        if labels is not None:
            raise NotImplementedError("the demo model returns logits only: evaluate it with labels=None "
                                      "(--hesnr-logits-capture labels_none)")
        hidden = self.gpt.hidden(input_ids, position_ids)                  # [b, s, h]; causal attention
        if output_processor is not None:                                   # GPTModel's hook (the chunked capture)
            return output_processor(hidden_states=hidden.transpose(0, 1).contiguous(),
                                    output_layer=LinearContract(self.output_layer), output_weight=None,
                                    scale_logits=None)
        logits = self.output_layer(hidden.transpose(0, 1).contiguous())    # [s, b, V / TP], as GPTModel's head
        return logits.transpose(0, 1).contiguous()                         # [b, s, V / TP], GPTModel's labels=None
