"""Helpers for the Megatron integration tests: a tiny vocab-parallel LM, in-memory
datasets, a one-stage forward-only schedule, parallel-state set-up.

The model is per-token (embedding + position embedding + MLP + megatron-core's
``ColumnParallelLinear`` output layer), so it gives the same logits under any
context-parallel split as long as tokens and positions travel together, and it
can be cut into pipeline stages.  Its forward takes the keyword arguments of
megatron-core's ``GPTModel.forward`` that the hook uses (``labels``,
``output_processor``) so every logits-capture strategy runs through real code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import torch

from megatron_hesnr.data.memory import MemoryDataset  # noqa: F401 - re-exported for the tests
from megatron_hesnr.megatron_lm.cpu_shim import schedules_on_cpu  # noqa: F401 - re-exported for the tests
from megatron_hesnr.megatron_lm.single_pass import run_pass  # noqa: F401 - re-exported for the tests

VOCAB = 50          # tokenizer vocabulary
PADDED_VOCAB = 56   # Megatron-style padding to a multiple of 4 (TP up to 4)
HIDDEN = 16
SEQ = 16


class LineCatcher(logging.Handler):
    """Collects the messages of a logger (add it beside the validation line's stdout handler)."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def uniform_dataset(vocab: int, *, n: int, seed: int, max_len: int, manifest=None) -> MemoryDataset:
    """``n`` trajectories of 4 to ``max_len - 1`` uniform tokens, categories 0-2 uniform."""
    rng = np.random.default_rng(seed)
    items = [(rng.integers(0, vocab, size=L).astype(np.int64), rng.integers(0, 3, size=L).astype(np.uint8))
             for L in rng.integers(4, max_len, size=n)]
    return MemoryDataset(items, vocab, manifest)


def forward_only(*, forward_step_func, data_iterator, model, num_microbatches, collect_non_loss_data, **_):
    """The contract of Megatron's forward-only schedule on one stage (no parallelism)."""
    it = data_iterator[0] if isinstance(data_iterator, list) else data_iterator
    m = model[0] if isinstance(model, list) else model
    out = []
    for _ in range(num_microbatches):
        output, loss_func = forward_step_func(it, m)
        out.append(loss_func(output, non_loss_data=True) if collect_non_loss_data else loss_func(output))
    return out


@contextlib.contextmanager
def model_parallel(**sizes):
    """megatron-core's ``parallel_state`` initialised with ``sizes`` for the block, then torn down."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(**sizes)
    try:
        yield ps
    finally:
        ps.destroy_model_parallel()


def make_dataset(seed: int, n: int = 7, max_len: int = 40) -> MemoryDataset:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        length = int(rng.integers(3, max_len))
        tokens = rng.integers(0, VOCAB, size=length).astype(np.int64)
        mask = rng.choice(np.array([0, 1, 1, 2, 3], dtype=np.uint8), size=length)
        mask[0] = 0
        if i == 0:
            mask[:] = 0  # a trajectory with nothing scored
        items.append((tokens, mask))
    return MemoryDataset(items, VOCAB)


def full_weights(seed: int = 1234) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "emb": torch.randn(PADDED_VOCAB, HIDDEN, generator=g),
        "pos": torch.randn(4 * SEQ, HIDDEN, generator=g) * 0.5,
        "w1": torch.randn(HIDDEN, HIDDEN, generator=g) / HIDDEN ** 0.5,
        "w2": torch.randn(HIDDEN, HIDDEN, generator=g) / HIDDEN ** 0.5,
        "out": torch.randn(PADDED_VOCAB, HIDDEN, generator=g) * 1.5,
    }


def reference_logits(w: dict, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits ``[b, s, V_padded]`` of the unsplit model."""
    h = w["emb"][tokens] + w["pos"][positions]
    h = torch.tanh(h @ w["w1"].t())
    h = torch.tanh(h @ w["w2"].t())
    return h @ w["out"].t()


def transformer_config(tp=1, pp=1, cp=1, **kw):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=2, hidden_size=HIDDEN, num_attention_heads=4, use_cpu_initialization=True,
                             pipeline_dtype=torch.float32, tensor_model_parallel_size=tp,
                             pipeline_model_parallel_size=pp, context_parallel_size=cp, **kw)


class TinyLM(torch.nn.Module):
    """Per-token LM with a real vocab-parallel output layer; one pipeline stage of it."""

    def __init__(self, config, weights: dict, pre_process=True, post_process=True, dropout=0.0,
                 with_output_processor=True, eval_noise=False):
        super().__init__()
        from megatron.core import parallel_state as ps
        from megatron.core.enums import ModelType
        from megatron.core.tensor_parallel import ColumnParallelLinear

        self.config = config
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process, self.post_process = pre_process, post_process
        self.with_output_processor = with_output_processor
        # Draw from every RNG in eval mode too (as e.g. random routing jitter would),
        # so a pass that did not restore RNG states would change later training.
        self.eval_noise = eval_noise
        self.input_tensor = None
        self.dropout = torch.nn.Dropout(dropout)
        if pre_process:
            self.emb = torch.nn.Parameter(weights["emb"].clone())
            self.pos = torch.nn.Parameter(weights["pos"].clone())
            self.w1 = torch.nn.Parameter(weights["w1"].clone())
        if post_process:
            self.w2 = torch.nn.Parameter(weights["w2"].clone())
            self.output_layer = ColumnParallelLinear(HIDDEN, PADDED_VOCAB, config=config, init_method=torch.nn.init.zeros_,
                                                     bias=False, gather_output=False, skip_bias_add=False)
            tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
            local = PADDED_VOCAB // tp
            with torch.no_grad():
                self.output_layer.weight.copy_(weights["out"][r * local:(r + 1) * local])

    def set_input_tensor(self, t):
        self.input_tensor = t[0] if isinstance(t, (list, tuple)) else t

    def forward(self, input_ids, position_ids, attention_mask, labels=None, output_processor=None, **_):
        if output_processor is not None and not self.with_output_processor:
            raise TypeError("output_processor not supported")
        if self.eval_noise and not self.training:
            import random

            torch.rand(3), np.random.rand(3), random.random()
        if self.pre_process:
            h = self.emb[input_ids] + self.pos[position_ids]
            h = self.dropout(torch.tanh(h @ self.w1.t())).transpose(0, 1).contiguous()  # [s, b, h]
        else:
            h = self.input_tensor
        if not self.post_process:
            return h
        h = self.dropout(torch.tanh(h @ self.w2.t()))
        if output_processor is not None:
            return output_processor(hidden_states=h, output_layer=self.output_layer, output_weight=None,
                                    labels=labels, scale_logits=lambda x: x, config=self.config)
        logits, _ = self.output_layer(h)  # [s, b, V/TP]
        if labels is None:
            return logits.transpose(0, 1).contiguous()
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits.float(), labels.t().contiguous()).t().contiguous()  # [b, s]


class TinyLMNoProcessor(TinyLM):
    """The same model with a pre-0.19 ``forward`` signature (no ``output_processor``)."""

    def forward(self, input_ids, position_ids, attention_mask, labels=None):
        return super().forward(input_ids, position_ids, attention_mask, labels=labels)


def reference_accumulator(wset, weights, cfg):
    """One process, full-vocabulary logits of the unsplit model: the oracle of the layouts."""
    from megatron_hesnr import HESNRAccumulator, token_stats
    from megatron_hesnr.evaluation.windows import window_sample

    acc = HESNRAccumulator(dataclasses.replace(cfg.metric, num_documents=len(wset.dataset)))
    for idx, w in wset.windows:
        x, y, m = (torch.from_numpy(a)[None] for a in window_sample(*wset.dataset[idx], w, SEQ))
        logits = reference_logits(weights, x, torch.arange(SEQ)[None])
        acc.update(token_stats(logits, y, k=cfg.metric.k, vocab_size=VOCAB, impl="torch"), m, torch.full_like(m, idx))
    return acc


def trajectory_tables_match(got: dict, ref, where: str) -> None:
    """The per-trajectory sums of a JSON state (``got``) equal ``ref``'s (counts exact, sums 1e-6)."""
    from megatron_hesnr import HESNRAccumulator

    acc = HESNRAccumulator.from_state_dict(got)
    assert acc.trajectories is not None, f"{where}: no per-trajectory sums"
    torch.testing.assert_close(acc.trajectories, ref.trajectories, rtol=1e-6, atol=1e-6,
                               msg=lambda m: f"{where} per-trajectory sums: {m}")


def windows_by_dp_rank(plan, wset, dp_size: int) -> dict:
    """``{trajectory: set of DP ranks}`` its windows are fed on under ``plan``."""
    shape, where = plan.shape, {}
    for bucket in plan.buckets:
        for first, count, nmb in shape.calls(len(bucket.windows)):
            for j in range(nmb):
                for r in range(dp_size):
                    for b in range(shape.micro_batch_size):
                        g = shape.slot(j, r, b)
                        if g < count:
                            where.setdefault(wset.windows[bucket.windows[first + g]][0], set()).add(r)
    return where



def model_chunks(make_chunk, vp: int | None = None) -> list:
    """This pipeline rank's model chunks (``vp`` of them under an interleaved schedule).

    ``make_chunk(pre_process=, post_process=, vp_stage=)`` builds one; chunk ``i`` of
    pipeline rank ``r`` is virtual stage ``i * PP + r``, as megatron-core numbers them.
    """
    from megatron.core import parallel_state as ps

    pp, rank, n = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank(), vp or 1
    return [make_chunk(pre_process=rank == 0 and i == 0, post_process=rank == pp - 1 and i == n - 1,
                       vp_stage=i if vp else None) for i in range(n)]


