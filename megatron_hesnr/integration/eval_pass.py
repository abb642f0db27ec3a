"""One HE-SNR pass over prepared trajectories through Megatron's forward-only schedule.

Independent of ``megatron.training``: everything it needs (process groups, the
forward-backward function, the model chunks, the dataset) is passed in, so the
Megatron-LM hook (:mod:`.hook`) and a NeMo / Megatron-Bridge adapter share it.

Per step every data-parallel rank runs ``num_microbatches`` micro-batches of
``micro_batch_size`` windows.  As in Megatron's ``get_batch``, only tensor-parallel
rank 0 reads the data; the micro-batch (tokens, labels, scoring mask, positions)
is broadcast over the TP group and then split for context parallelism by the same
function that splits the loss mask, so the scoring mask goes where its tokens go.
The logits of the last pipeline stage go to :func:`token_stats` (merged over TP)
and into one accumulator per set, reduced once over data x context parallel.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..accumulator import AccumulatorConfig, HESNRAccumulator
from ..token_stats import token_stats
from .capture import LogitsCapture
from .config import HESNRConfig
from .windows import Window, plan_windows, window_sample

log = logging.getLogger(__name__)


@dataclass
class EvalTopology:
    """Where this rank sits; groups of size 1 may be ``None``."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tp_group: Any = None
    tp_rank: int = 0
    tp_size: int = 1
    tp_src: int = 0
    """Global rank of tensor-parallel rank 0 (the broadcast source)."""
    reduce_group: Any = None
    """Data-parallel x context-parallel group: the one all-reduce of the accumulator."""
    dp_rank: int = 0
    dp_size: int = 1
    cp_group: Any = None
    cp_rank: int = 0
    cp_size: int = 1
    is_first_stage: bool = True
    is_last_stage: bool = True
    pp_size: int = 1
    cp_split: Callable[[dict], dict] | None = None
    """Splits a batch dict for this CP rank (Megatron's ``get_batch_on_this_cp_rank``)."""


@dataclass
class WindowedSet:
    """A named set cut into windows (identical on every rank: it is read the same way)."""

    name: str
    dataset: Any
    windows: list[tuple[int, Window]]
    num_trajectories: int
    num_scored_targets: int
    dropped_scored_targets: int
    """Scored targets no window covers (only under ``truncate``)."""

    def summary(self) -> dict:
        return {"num_trajectories": self.num_trajectories, "num_windows": len(self.windows),
                "num_scored_targets": self.num_scored_targets,
                "dropped_scored_targets": self.dropped_scored_targets}


def plan_set(name: str, dataset, seq_length: int, policy: str, stride: int | None,
             skip_empty: bool = True) -> WindowedSet:
    """Windows of every trajectory of ``dataset`` (items ``(tokens, mask)``)."""
    windows: list[tuple[int, Window]] = []
    scored = dropped = 0
    for i in range(len(dataset)):
        tokens, mask = dataset[i]
        if len(tokens) != len(mask):
            raise ValueError(f"set {name!r}: trajectory {i} has {len(tokens)} tokens but a mask of {len(mask)}")
        mask = np.asarray(mask)
        scorable = mask[1:] != 0  # targets 1 .. L-1
        n_scored = int(scorable.sum())
        scored += n_scored
        covered = 0
        for w in plan_windows(len(tokens), seq_length, policy, stride):
            n = int((mask[w.score_from:w.end] != 0).sum())
            covered += n
            if n or not skip_empty:
                windows.append((i, w))
        dropped += n_scored - covered
    return WindowedSet(name, dataset, windows, len(dataset), scored, dropped)


class HESNRPass:
    """Runs HE-SNR over windowed sets with a given forward-backward function."""

    def __init__(self, config: HESNRConfig, *, vocab_size: int, seq_length: int, topology: EvalTopology,
                 forward_backward_func: Callable, capture: LogitsCapture,
                 padded_vocab_size: int | None = None, make_attention_mask: bool = False):
        self.config = config
        self.vocab_size = int(vocab_size)
        self.padded_vocab_size = padded_vocab_size
        self.seq_length = int(seq_length)
        self.topo = topology
        self.forward_backward_func = forward_backward_func
        self.capture = capture
        self.make_attention_mask = make_attention_mask
        if topology.cp_size > 1 and seq_length % (2 * topology.cp_size):
            raise ValueError(f"seq_length {seq_length} must be divisible by 2 x CP = {2 * topology.cp_size}")
        self._acc: HESNRAccumulator | None = None

    # ----------------------------------------------------------------- batches
    def accumulator_config(self) -> AccumulatorConfig:
        c = self.config
        return AccumulatorConfig(k=c.k, threshold=c.threshold, num_bins=c.num_bins, category_names=c.category_names)

    def _local_microbatches(self, wset: WindowedSet, step_start: int, nmb: int) -> list:
        """This DP rank's micro-batches of one step (numpy arrays; ``None`` off TP rank 0)."""
        mbs, dp, S = self.config.micro_batch_size, self.topo.dp_size, self.seq_length
        out = []
        for j in range(nmb):
            if self.topo.tp_rank != 0:
                out.append(None)
                continue
            arr = np.zeros((3, mbs, S), dtype=np.int64)
            for b in range(mbs):
                g = step_start + (j * dp + self.topo.dp_rank) * mbs + b
                if g >= len(wset.windows):
                    continue  # empty sample: all-zero mask, scores nothing
                idx, w = wset.windows[g]
                tokens, mask = wset.dataset[idx]
                arr[0, b], arr[1, b], arr[2, b] = window_sample(np.asarray(tokens), np.asarray(mask), w, S)
            out.append(arr)
        return out

    def _materialize(self, raw) -> dict:
        """TP broadcast of one micro-batch, positions (and mask), then the CP split."""
        mbs, S, topo = self.config.micro_batch_size, self.seq_length, self.topo
        if topo.tp_rank == 0:
            buf = torch.from_numpy(raw).to(topo.device)
        else:
            buf = torch.empty((3, mbs, S), dtype=torch.int64, device=topo.device)
        if topo.tp_size > 1:
            torch.distributed.broadcast(buf, src=topo.tp_src, group=topo.tp_group)
        batch = {
            "tokens": buf[0],
            "labels": buf[1],
            "hesnr_mask": buf[2],
            "position_ids": torch.arange(S, device=topo.device, dtype=torch.int64).unsqueeze(0).expand(mbs, S).contiguous(),
            "attention_mask": None,
        }
        if self.make_attention_mask:
            causal = torch.ones(S, S, dtype=torch.bool, device=topo.device).triu_(1)
            batch["attention_mask"] = causal.view(1, 1, S, S).expand(mbs, 1, S, S).contiguous()
        if topo.cp_size > 1:
            if topo.cp_split is None:
                raise RuntimeError("context parallelism needs EvalTopology.cp_split")
            batch = topo.cp_split(batch)
        return batch

    # ------------------------------------------------------------- schedule
    def _forward_step(self, data_iterator, model, checkpoint_activations_microbatch=None):
        batch = self._materialize(next(data_iterator))
        output, layout = self.capture(model, batch["tokens"], batch["position_ids"], batch["attention_mask"],
                                      batch["labels"])
        return output, partial(self._consume, batch, layout)

    def _tp_group_for(self, logits: torch.Tensor):
        width, tp = logits.shape[-1], self.topo.tp_size
        if self.padded_vocab_size is None or tp == 1 or width * tp == self.padded_vocab_size:
            return self.topo.tp_group if tp > 1 else None
        if width == self.padded_vocab_size:
            return None  # logits were gathered (parallel_output=False): every rank has all columns
        raise ValueError(f"logits have {width} columns; expected {self.padded_vocab_size} / TP={tp} "
                         f"or {self.padded_vocab_size} (padded vocabulary)")

    def _consume(self, batch, layout, output_tensor, non_loss_data=False):
        labels, mask = batch["labels"], batch["hesnr_mask"]
        if layout == "sb":
            labels, mask = labels.t(), mask.t()
        logits = output_tensor
        if tuple(logits.shape[:-1]) != tuple(labels.shape):
            raise RuntimeError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)} "
                               f"(layout {layout!r}, capture {self.capture.strategy!r})")
        stats = token_stats(logits, labels, k=self.config.k, vocab_size=self.vocab_size,
                            tp_group=self._tp_group_for(logits), impl=self.config.impl)
        self._acc.update(stats, mask.to(stats.valid.device))
        return int((mask != 0).sum())

    def _num_microbatches(self) -> int:
        return self.config.num_microbatches or max(self.topo.pp_size, 4)

    def run(self, model: Sequence[torch.nn.Module], wset: WindowedSet) -> HESNRAccumulator:
        """Evaluate one set; returns its accumulator (reduced on the last stage)."""
        model = list(model)
        acc = HESNRAccumulator(self.accumulator_config(), device=self.topo.device)
        self._acc = acc
        mbs, dp = self.config.micro_batch_size, self.topo.dp_size
        per_step = dp * mbs * self._num_microbatches()
        steps = math.ceil(len(wset.windows) / per_step) if wset.windows else 0
        if self.config.eval_iters is not None:
            steps = min(steps, self.config.eval_iters)
        for step in range(steps):
            start = step * per_step
            remaining = len(wset.windows) - start
            nmb = min(self._num_microbatches(), math.ceil(remaining / (dp * mbs)))
            if len(model) > 1:  # interleaved schedules want whole rounds of PP micro-batches
                pp = max(self.topo.pp_size, 1)
                nmb = math.ceil(nmb / pp) * pp
            raw = self._local_microbatches(wset, start, nmb)
            # One iterator per model chunk, as Megatron's evaluate() passes them.
            iterator = [iter(raw) for _ in model]
            self.forward_backward_func(
                forward_step_func=self._forward_step,
                data_iterator=iterator,
                model=model,
                num_microbatches=nmb,
                seq_length=self.seq_length,
                micro_batch_size=mbs,
                decoder_seq_length=None,
                forward_only=True,
                collect_non_loss_data=True,
            )
        self._acc = None
        if self.topo.is_last_stage:
            acc.all_reduce(self.topo.reduce_group)
        return acc
