"""Evaluating the demo checkpoints with the metric code that runs inside Megatron.

Per checkpoint and batch of windows: the model's final hidden states, then logits of
the output layer, then ``token_stats`` and ``HESNRAccumulator.update``; one record per
checkpoint with the accumulator's ``compute()`` and ``state_dict()``.

Two paths:

* ``tp=2`` (default): two gloo processes on the CPU.  Megatron-core's
  ``parallel_state`` builds the tensor-parallel group and each rank holds half of
  the output layer in megatron-core's ``ColumnParallelLinear`` (the vocab-parallel
  layer of ``GPTModel``), so it only ever has logits for its half of the padded
  vocabulary; ``token_stats(tp_group=...)`` merges the per-rank statistics.  The
  transformer trunk is replicated (it is not what is being shown).  On rank 0 the
  same batch is also scored in one process with the whole vocabulary, and the
  per-token NLL is checked against Megatron's ``vocab_parallel_cross_entropy``;
  the largest differences are reported.  Without megatron-core the group is the
  plain gloo world and the output layer is sliced by hand.
* ``tp=1``: one process, whole-vocabulary logits.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..accumulator import AccumulatorConfig, HESNRAccumulator
from ..evaluation.topology import Topology, reduce_metrics
from ..evaluation.records import append_records, make_record
from ..token_stats import token_stats
from .training import load_checkpoint
from .windows import EvalWindows

log = logging.getLogger(__name__)

RECORD_RUN = "hesnr-demo"


@dataclass(kw_only=True)
class EvalJob:
    """Everything a (possibly spawned) evaluation process needs; picklable."""

    checkpoints: list[dict]
    """[{"iteration", "consumed_samples", "path", "name"}], in order; ``name`` (Megatron's
    ``.../iter_0000100`` directory) is what records and the scores CSV call the checkpoint."""
    windows_path: str
    """``torch.save``d :meth:`EvalWindows.to_dict`."""
    records_path: str
    """JSONL file the records are appended to (rank 0)."""
    extras_path: str
    """JSON file for the path taken, the cross-checks and per-token top-1 flags."""
    vocab_size: int
    dataset: str
    accumulator: dict = field(default_factory=dict)
    """``AccumulatorConfig`` fields."""
    batch_size: int = 16
    tp: int = 2
    run: str = RECORD_RUN
    config: dict = field(default_factory=dict)
    """Extra configuration stored in every record."""
    log_level: int = logging.INFO
    check_all: bool = False
    """Cross-check TP against one process at every checkpoint (default: the last only)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- output layer
class _SlicedOutputLayer:
    """This rank's rows of the output weight, used without megatron-core."""

    def __init__(self, weight: torch.Tensor, rank: int, size: int):
        rows = weight.shape[0] // size
        self.weight = weight[rank * rows:(rank + 1) * rows].detach()

    def __call__(self, hidden_sbh: torch.Tensor) -> torch.Tensor:
        return hidden_sbh @ self.weight.t()


class _MegatronOutputLayer:
    """megatron-core's ``ColumnParallelLinear``, as ``GPTModel.output_layer`` (no gather)."""

    def __init__(self, weight: torch.Tensor, tp: int):
        from megatron.core import parallel_state as ps
        from megatron.core.model_parallel_config import ModelParallelConfig
        from megatron.core.tensor_parallel import ColumnParallelLinear

        cfg = ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True,
                                  params_dtype=weight.dtype)
        self.layer = ColumnParallelLinear(weight.shape[1], weight.shape[0], config=cfg,
                                          init_method=torch.nn.init.zeros_, bias=False,
                                          gather_output=False, skip_bias_add=False)
        rank = ps.get_tensor_model_parallel_rank()
        rows = self.layer.weight.shape[0]
        with torch.no_grad():
            self.layer.weight.copy_(weight[rank * rows:(rank + 1) * rows])

    def __call__(self, hidden_sbh: torch.Tensor) -> torch.Tensor:
        out, _ = self.layer(hidden_sbh)
        return out


# --------------------------------------------------------------------------- one checkpoint
@dataclass
class _Checks:
    max_rel_diff_vs_single: float = 0.0
    """Largest |TP metric - single-process metric| / max(1, |single|) over the headline metrics."""
    max_abs_diff_nll_vs_megatron_ce: float = 0.0
    """Largest per-token |NLL - Megatron vocab-parallel CE| (padding columns masked)."""


def _compare(a: dict, b: dict) -> float:
    """Largest relative difference ``|a - b| / max(1, |b|)`` over the headline metrics."""
    worst = 0.0
    for key in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "high_entropy_fraction", "num_high_entropy",
                "hesnr_stderr", "ppl_stderr"):
        x, y = a.get(key), b.get(key)
        if x is None or y is None or (math.isnan(float(x)) and math.isnan(float(y))):
            continue
        worst = max(worst, abs(float(x) - float(y)) / max(1.0, abs(float(y))))
    return worst


def evaluate_checkpoint(model, windows: EvalWindows, acc: HESNRAccumulator, *, vocab_size: int,
                        batch_size: int, tp_group=None, tp_rank: int = 0, tp_size: int = 1,
                        output_layer=None, check: bool = False, k: int = 10):
    """Run the windows through the model; returns (top1 flags [W, T], checks).

    ``output_layer(hidden [s, b, h]) -> logits [s, b, V_local]``; None means the
    model's whole output layer (one process).
    """
    top1 = torch.zeros(windows.labels.shape, dtype=torch.bool)
    # The single-process reference runs on the rank asked to check; Megatron's CE is
    # a collective over the TP group, so with ``check`` every rank must pass True.
    single = HESNRAccumulator(acc.config) if check and tp_rank == 0 else None
    checks = _Checks()
    ce_fn = None
    if check and tp_size > 1:
        try:
            from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as ce_fn
        except ImportError:
            ce_fn = None
    row = 0
    with torch.no_grad():
        for inputs, labels, mask, doc_ids in windows.batches(batch_size):
            hidden = model.hidden(inputs)                      # [b, s, h]
            labels_sb = labels.t().contiguous()                 # Megatron's [s, b] layout
            mask_sb = mask.t().contiguous()
            # Trajectory of every token: per-trajectory sums give the stderrs.
            doc_sb = doc_ids.t().contiguous() if acc.config.num_documents is not None else None
            if output_layer is None:
                logits = hidden.transpose(0, 1) @ model.output_weight.t()
            else:
                logits = output_layer(hidden.transpose(0, 1).contiguous())   # [s, b, V/tp]
            stats = token_stats(logits, labels_sb, k=k, vocab_size=vocab_size, tp_group=tp_group)
            acc.update(stats, mask_sb, doc_sb)
            top1[row:row + inputs.shape[0]] = (stats.top1 & stats.valid).t()
            if single is not None:
                full = hidden.transpose(0, 1) @ model.output_weight.t()
                ref = token_stats(full, labels_sb, k=k, vocab_size=vocab_size)
                single.update(ref, mask_sb, doc_sb)
            if check and ce_fn is not None:
                # Megatron's CE covers the padded vocabulary; push the padding columns
                # to a huge negative logit (finite, so a shard of only padding stays
                # NaN-free) so that both compute the same quantity.
                local = logits.clone()
                pad_from = max(0, vocab_size - tp_rank * local.shape[-1])
                local[..., pad_from:] = -1e30
                ce = ce_fn(local, labels_sb.clamp(min=0))
                sel = (mask_sb > 0) & stats.valid
                if bool(sel.any()):
                    diff = (ce[sel].double() + stats.logp[sel]).abs().max().item()
                    checks.max_abs_diff_nll_vs_megatron_ce = max(checks.max_abs_diff_nll_vs_megatron_ce, diff)
            row += inputs.shape[0]
    if single is not None:
        checks.max_rel_diff_vs_single = _compare(acc.compute(), single.compute())
    return top1, checks


# --------------------------------------------------------------------------- drivers
def _evaluate_all(job: EvalJob, rank: int, size: int, groups: Topology, output_layer_factory,
                  path_name: str) -> None:
    windows = EvalWindows(**torch.load(job.windows_path, weights_only=True))
    acc_cfg = AccumulatorConfig(**job.accumulator)
    extras = {"path": path_name, "tp": size, "checkpoints": []}
    for n, info in enumerate(job.checkpoints):
        t0 = time.perf_counter()
        # The cross-checks (a second, whole-vocabulary pass and Megatron's CE) cost as
        # much as the evaluation itself; one checkpoint shows the agreement.
        check = size > 1 and (job.check_all or n == len(job.checkpoints) - 1)
        model, _ = load_checkpoint(Path(info["path"]))
        layer = output_layer_factory(model) if output_layer_factory else None
        acc = HESNRAccumulator(acc_cfg)
        top1, checks = evaluate_checkpoint(
            model, windows, acc, vocab_size=job.vocab_size, batch_size=job.batch_size, tp_group=groups.tp_group,
            tp_rank=rank, tp_size=size, output_layer=layer, check=check, k=acc_cfg.k)
        # The integration's reduction: one all-reduce over DP x CP (size 1 here, so
        # None), then compute() on the last stage.
        metrics = reduce_metrics(acc, groups)
        if rank == 0:
            record = make_record(iteration=info["iteration"], consumed_samples=info["consumed_samples"],
                                 checkpoint=info.get("name", str(info["path"])), run=job.run, dataset=job.dataset,
                                 config={**job.config, "tp": size, "eval_path": path_name}, acc=acc)
            append_records(job.records_path, [record])
            extras["checkpoints"].append({"iteration": info["iteration"], "seconds": time.perf_counter() - t0,
                                          "checked": check, **asdict(checks), "top1": top1.tolist()})
            log.info("eval: iter %6d  HE-SNR %.4f ± %.4f  HE-PPL %.2f  PPL %.2f  |HE|/|M| %d/%d  (%.1fs)",
                     info["iteration"], metrics["hesnr"], metrics.get("hesnr_stderr", float("nan")),
                     metrics["he_ppl"], metrics["ppl"],
                     metrics["num_high_entropy"], metrics["num_tokens"], time.perf_counter() - t0)
    if rank == 0:
        with open(job.extras_path, "w", encoding="utf-8") as f:
            json.dump(extras, f)


def _tp_worker(rank: int, job: EvalJob, port: int) -> None:
    import warnings

    import torch.distributed as dist

    logging.basicConfig(level=job.log_level if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", message=".*Apex.*")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // job.tp))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=job.tp)
    try:
        try:
            from megatron.core import parallel_state as ps
        except ImportError:
            ps = None
        if ps is not None:
            from ..megatron_lm.topology import topology_from_parallel_state

            ps.initialize_model_parallel(tensor_model_parallel_size=job.tp)
            groups = topology_from_parallel_state()
            name = f"TP={job.tp} over gloo (megatron-core parallel_state + ColumnParallelLinear output layer)"
            factory = lambda model: _MegatronOutputLayer(model.output_weight, job.tp)  # noqa: E731
        else:
            groups = Topology(tp_group=dist.group.WORLD, tp_rank=rank, tp_size=job.tp)
            name = f"TP={job.tp} over gloo (torch.distributed; megatron-core not installed)"
            factory = lambda model: _SlicedOutputLayer(model.output_weight, rank, job.tp)  # noqa: E731
        _evaluate_all(job, rank, job.tp, groups, factory, name)
        if ps is not None:
            ps.destroy_model_parallel()
    finally:
        dist.destroy_process_group()


def run_evaluation(job: EvalJob) -> dict:
    """Evaluate every checkpoint of ``job``; returns the extras (path taken, checks, top-1).

    ``job.tp > 1`` spawns that many gloo processes; if that fails (no loopback
    networking, a sandbox that forbids it) the single-process path is taken and the
    reason is logged.
    """
    Path(job.records_path).unlink(missing_ok=True)
    if job.tp > 1:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_tp_worker, args=(job, free_port()), nprocs=job.tp, join=True)
            with open(job.extras_path, encoding="utf-8") as f:
                return json.load(f)
        except Exception as exc:  # the fallback is announced, never silent
            log.warning("TP=%d evaluation over gloo failed (%s); evaluating in one process instead",
                        job.tp, str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            Path(job.records_path).unlink(missing_ok=True)
    single = Topology()
    _evaluate_all(job, 0, 1, single, None, "single process (TP=1, whole vocabulary)")
    with open(job.extras_path, encoding="utf-8") as f:
        return json.load(f)
