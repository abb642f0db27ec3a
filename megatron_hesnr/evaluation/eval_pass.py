"""One HE-SNR pass over prepared trajectories through Megatron's forward-only schedule.

Independent of ``megatron.training``: everything it needs (process groups, the
forward-backward function, the model chunks, the dataset) is passed in, so the
Megatron-LM hook (:mod:`.hook`) and a NeMo / Megatron-Bridge adapter share it.

Windows are grouped into length buckets (:mod:`.buckets`; or all padded to
``seq_length`` under ``--hesnr-pad-to-seq-length``) and each bucket runs as whole
forward-only schedule calls at that bucket's sequence length: per call every
data-parallel rank runs ``num_microbatches`` micro-batches of ``micro_batch_size``
windows (fewer in a bucket's last call; slots beyond its windows are empty samples
that score nothing).  As in Megatron's ``get_batch``, only tensor-parallel
rank 0 reads the data; the micro-batch (tokens, labels, scoring mask, trajectory
index of every token) is broadcast over the TP group in one call and then split for
context parallelism by the same function that splits the loss mask, so the scoring
mask and the trajectory indices go where their tokens go.  The logits of the last
pipeline stage go to :func:`token_stats` (merged over TP) -- or, under the ``chunked`` capture,
the model returns those per-token statistics itself (:mod:`.chunked_stats`) -- and into one accumulator
per set that keeps per-trajectory sums (``num_documents`` = the set's trajectories),
reduced once over data x context parallel: the windows of one trajectory, on
whichever ranks they ran, add up in its row.

A ``token_observer`` sees every micro-batch's per-token statistics on the last stage,
with where each token comes from (trajectory and target position): what a per-token
analysis needs (the demo's greedy-action proxy score, its check against Megatron's
cross entropy) without a second forward pass.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..metric.accumulator import HESNRAccumulator
from ..metric.reduction import reduce_on_last_stage
from ..metric.token_stats import TokenStats, token_stats
from .buckets import BucketPlan, ScheduleShape, alignment, plan_buckets
from .capture import LogitsCapture, unwrap
from .chunked_stats import StatsRequest
from .config import HESNRConfig
from .topology import Topology
from .windows import Window, plan_windows, window_sample

log = logging.getLogger(__name__)

#: Rows of a micro-batch buffer: inputs, labels, scoring mask, trajectory index.
_ROWS, _DOC = 4, 3

#: ``observer(set_name, stats, mask, doc, target)``: a micro-batch's :class:`~megatron_hesnr.metric.token_stats.TokenStats`
#: and, in the same layout, each token's scoring category, trajectory index (``-1``: padding or an empty
#: sample) and target position in its trajectory (the index of the label's token).
TokenObserver = Callable[[str, Any, torch.Tensor, torch.Tensor, torch.Tensor], None]


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
    plans: dict = field(default_factory=dict, repr=False, compare=False)
    """Bucket plans already made for this set, by layout (the plan is pure: made once)."""

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


def plan_for_layout(config: HESNRConfig, wset: WindowedSet, seq_length: int, *, dp_size: int, pp_size: int,
                    cp_size: int, tp_size: int, sequence_parallel: bool, vp_group: int | None) -> BucketPlan:
    """The bucket plan of ``wset`` under a parallel layout (made once per set and layout).

    ``vp_group``: micro-batches per virtual-stage group of an interleaved pipeline (``None``: not
    interleaved).  Under ``eval_iters`` the same first windows are evaluated, bucketed or padded.
    """
    shape = ScheduleShape(dp_size=dp_size, micro_batch_size=config.micro_batch_size,
                          num_microbatches=config.num_microbatches or max(pp_size, 4), pp_size=pp_size,
                          vp_group=vp_group)
    align = alignment(config.length_multiple, cp_size=cp_size, tp_size=tp_size, sequence_parallel=sequence_parallel)
    limit = len(wset.windows)
    if config.eval_iters is not None:
        limit = min(limit, config.eval_iters * shape.full_count * shape.windows_per_microbatch)
    key = (shape, align, limit, seq_length, config.max_buckets, config.pad_to_seq_length)
    if key not in wset.plans:
        wset.plans[key] = plan_buckets([w.num_inputs for _, w in wset.windows[:limit]], seq_length, align=align,
                                       shape=shape, max_buckets=config.max_buckets, padded=config.pad_to_seq_length)
    return wset.plans[key]


class HESNRPass:
    """Runs HE-SNR over windowed sets with a given forward-backward function."""

    def __init__(self, config: HESNRConfig, *, vocab_size: int, seq_length: int, topology: Topology,
                 forward_backward_func: Callable, capture: LogitsCapture,
                 padded_vocab_size: int | None = None, make_attention_mask: bool = False,
                 token_observer: TokenObserver | None = None):
        self.config = config
        self.vocab_size = int(vocab_size)
        self.padded_vocab_size = padded_vocab_size
        self.seq_length = int(seq_length)
        self.topo = topology
        self.forward_backward_func = forward_backward_func
        self.capture = capture
        self.make_attention_mask = make_attention_mask
        self.token_observer = token_observer
        self._set_name: str | None = None
        if topology.cp_size > 1 and seq_length % (2 * topology.cp_size):
            raise ValueError(f"seq_length {seq_length} must be divisible by 2 x CP = {2 * topology.cp_size}")
        self._acc: HESNRAccumulator | None = None
        self._masks: dict[int, torch.Tensor] = {}
        self.plan: BucketPlan | None = None
        """The bucket plan of the last :meth:`run`."""
        self.metrics: dict | None = None
        """The metrics of the last :meth:`run` (last pipeline stage; ``None`` elsewhere)."""

    # ----------------------------------------------------------------- batches
    def plan_for(self, model: Sequence[torch.nn.Module], wset: WindowedSet) -> BucketPlan:
        """The bucket plan of ``wset`` for this layout and ``model`` (a list longer than 1: interleaved)."""
        cfg = getattr(unwrap(model[0]), "config", None)
        pp = max(self.topo.pp_size, 1)
        vp_group = (getattr(cfg, "microbatch_group_size_per_vp_stage", None) or pp) if len(model) > 1 else None
        return plan_for_layout(self.config, wset, self.seq_length, dp_size=self.topo.dp_size, pp_size=pp,
                               cp_size=self.topo.cp_size, tp_size=self.topo.tp_size,
                               sequence_parallel=bool(getattr(cfg, "sequence_parallel", False)), vp_group=vp_group)

    def _local_microbatches(self, wset: WindowedSet, ids: Sequence[int], nmb: int, length: int,
                            shape: ScheduleShape) -> list:
        """This DP rank's micro-batches of one call: ``(length, int64 [4, mbs, length] or None off TP rank 0,
        first target position of each sample's window or None without a token observer)``.

        Rows: inputs, labels, scoring mask, trajectory index (``-1`` on padding and empty samples).
        """
        mbs = shape.micro_batch_size
        out = []
        for j in range(nmb):
            slots = [shape.slot(j, self.topo.dp_rank, b) for b in range(mbs)]
            windows = [wset.windows[ids[g]] if g < len(ids) else None for g in slots]  # None: empty sample
            first = None
            if self.token_observer is not None:  # every rank knows the windows; no broadcast needed
                first = np.array([-1 if iw is None else iw[1].start + 1 for iw in windows], dtype=np.int64)
            if self.topo.tp_rank != 0:
                out.append((length, None, first))
                continue
            arr = np.zeros((_ROWS, mbs, length), dtype=np.int64)
            arr[_DOC] = -1
            for b, iw in enumerate(windows):
                if iw is None:
                    continue  # empty sample: all-zero mask, scores nothing
                idx, w = iw
                tokens, mask = wset.dataset[idx]
                arr[0, b], arr[1, b], arr[2, b] = window_sample(np.asarray(tokens), np.asarray(mask), w, length)
                arr[_DOC, b, :w.num_inputs] = idx
            out.append((length, arr, first))
        return out

    def _attention_mask(self, length: int):
        """One causal ``[1, 1, L, L]`` bool mask per bucket length (CP-split once), shared by its micro-batches."""
        if length not in self._masks:
            causal = torch.ones(length, length, dtype=torch.bool, device=self.topo.device).triu_(1)
            batch = {"attention_mask": causal.view(1, 1, length, length)}
            if self.topo.cp_size > 1:
                batch = self._cp_split(batch)
            self._masks = {length: batch["attention_mask"]}  # one bucket at a time: free the last one
        return self._masks[length]

    def _cp_split(self, batch: dict) -> dict:
        if self.topo.cp_split is None:
            raise RuntimeError("context parallelism needs Topology.cp_split")
        return self.topo.cp_split(batch)

    def _materialize(self, item) -> dict:
        """TP broadcast of one micro-batch (one call), positions (and attention mask), then the CP split."""
        S, raw, first = item
        mbs, topo = self.config.micro_batch_size, self.topo
        if topo.tp_rank == 0:
            buf = torch.from_numpy(raw).to(topo.device)
        else:
            buf = torch.empty((_ROWS, mbs, S), dtype=torch.int64, device=topo.device)
        if topo.tp_size > 1:
            torch.distributed.broadcast(buf, src=topo.tp_src, group=topo.tp_group)
        batch = {
            "tokens": buf[0],
            "labels": buf[1],
            "hesnr_mask": buf[2],
            "hesnr_doc_ids": buf[_DOC],
            "position_ids": torch.arange(S, device=topo.device, dtype=torch.int64).unsqueeze(0).expand(mbs, S).contiguous(),
            "attention_mask": None,
        }
        if topo.cp_size > 1:
            batch = self._cp_split(batch)
        if first is not None:
            # Target of label i of a window starting at token s: token s + 1 + i (positions travel with CP).
            starts = torch.from_numpy(first).to(topo.device).unsqueeze(1)
            batch["hesnr_target"] = torch.where(batch["hesnr_doc_ids"] >= 0, starts + batch["position_ids"], -1)
        if self.make_attention_mask:
            batch["attention_mask"] = self._attention_mask(S)
        return batch

    # ------------------------------------------------------------- schedule
    def _forward_step(self, data_iterator, model, checkpoint_activations_microbatch=None):
        batch = self._materialize(next(data_iterator))
        request = None
        if self.capture.makes_stats:
            topo = self.topo
            request = StatsRequest(labels=batch["labels"], k=self.config.metric.k, vocab_size=self.vocab_size,
                                   padded_vocab_size=self.padded_vocab_size,
                                   tp_group=topo.tp_group if topo.tp_size > 1 else None, tp_size=topo.tp_size,
                                   impl=self.config.impl, chunk=self.config.logits_chunk)
        output, layout = self.capture(model, batch["tokens"], batch["position_ids"], batch["attention_mask"],
                                      batch["labels"], **({"stats": request} if request is not None else {}))
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
        labels, mask, doc = batch["labels"], batch["hesnr_mask"], batch["hesnr_doc_ids"]
        if layout in ("sb", "stats"):
            labels, mask, doc = labels.t(), mask.t(), doc.t()
        logits = output_tensor
        if tuple(logits.shape[:-1]) != tuple(labels.shape):
            raise RuntimeError(f"{'statistics' if layout == 'stats' else 'logits'} {tuple(logits.shape)} do not "
                               f"match labels {tuple(labels.shape)} (layout {layout!r}, capture {self.capture.strategy!r})")
        if layout == "stats":  # made inside the model, merged over TP already
            stats = TokenStats.unpack(output_tensor, k=self.config.metric.k)
        else:
            stats = token_stats(logits, labels, k=self.config.metric.k, vocab_size=self.vocab_size,
                                tp_group=self._tp_group_for(logits), impl=self.config.impl)
        tracked = self._acc.config.num_documents is not None
        self._acc.update(stats, mask.to(stats.valid.device), doc if tracked else None)
        if self.token_observer is not None:
            target = batch["hesnr_target"]
            self.token_observer(self._set_name, stats, mask, doc, target.t() if layout in ("sb", "stats") else target)
        return int((mask != 0).sum())

    def run(self, model: Sequence[torch.nn.Module], wset: WindowedSet) -> HESNRAccumulator:
        """Evaluate one set; returns its accumulator, reduced over DP x CP on the last stage
        (:func:`~megatron_hesnr.metric.reduction.reduce_on_last_stage`; its metrics in :attr:`metrics`)."""
        model = list(model)
        # Per-trajectory sums for the standard errors and `hesnr compare` (none for an empty set).
        acc = HESNRAccumulator(dataclasses.replace(self.config.metric, num_documents=wset.num_trajectories or None),
                               device=self.topo.device)
        self._acc, self._set_name = acc, wset.name
        plan = self.plan = self.plan_for(model, wset)
        for bucket in plan.buckets:
            for first, count, nmb in plan.shape.calls(len(bucket.windows)):
                raw = self._local_microbatches(wset, bucket.windows[first:first + count], nmb, bucket.length,
                                               plan.shape)
                # One iterator per model chunk, as Megatron's evaluate() passes them.
                iterator = [iter(raw) for _ in model]
                self.forward_backward_func(
                    forward_step_func=self._forward_step,
                    data_iterator=iterator,
                    model=model,
                    num_microbatches=nmb,
                    seq_length=bucket.length,
                    micro_batch_size=plan.shape.micro_batch_size,
                    decoder_seq_length=None,
                    forward_only=True,
                    collect_non_loss_data=True,
                )
        self._acc = None
        self._masks = {}
        self.metrics = reduce_on_last_stage(acc, self.topo.reduce_group, self.topo.is_last_stage)
        return acc
