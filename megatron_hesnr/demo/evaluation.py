"""Evaluating the demo checkpoints with the evaluator a Megatron run uses.

One :class:`~megatron_hesnr.evaluation.HESNREvaluator` per evaluation run opens the
prepared held-out set (``hesnr prepare``'s prefix), cuts it into windows and length
buckets, and at each checkpoint (``evaluate(model, EvalContext(...))``; the starting weights,
iteration 0, through ``evaluate_at_start``: the demo turns ``eval_at_start`` on) runs the pass
through a forward-only schedule, reduces, prints the validation line and appends the
JSONL record -- the code path of ``MegatronHESNRHook`` and ``HESNRCallback``.  The model
is the demo GPT behind ``GPTModel``'s forward signature (:mod:`.eval_model`); a token
observer keeps each scored token's top-1 flag and NLL for the proxy score and the checks.

Paths:

* ``tp=2`` (default): two gloo processes on the CPU.  With megatron-core installed its
  ``parallel_state`` builds the tensor-parallel group, each rank holds half of the
  output layer in ``ColumnParallelLinear`` and megatron-core's forward-only schedule
  runs the pass; without it the group is the plain gloo world, the output layer is
  sliced by hand and the demo's stand-in schedule (:mod:`.schedule`) runs it.
* ``tp=1``: one process, the whole vocabulary (megatron-core's schedule over a
  one-process gloo group when it is installed).

Cross-checks (the last checkpoint, or all with ``check_all``): the same windows scored in
one process with the whole vocabulary by ``token_stats`` + ``HESNRAccumulator`` directly
(no evaluator, no buckets, no TP) against the evaluator's metrics, and the evaluator's
per-token NLL against Megatron's ``vocab_parallel_cross_entropy`` on the TP logits.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..metric.accumulator import HESNRAccumulator
from ..evaluation import EvalContext, HESNRConfig, HESNREvaluator, Topology
from ..evaluation.evaluator import is_last_rank, open_prepared_dataset
from ..evaluation.windows import window_sample
from ..metric.token_stats import token_stats
from .eval_model import MegatronStyleGPT, has_megatron_core
from .schedule import schedule
from .training import load_checkpoint

log = logging.getLogger(__name__)

RECORD_RUN = "hesnr-demo"


@dataclass(kw_only=True)
class EvalJob:
    """Everything a (possibly spawned) evaluation process needs; picklable."""

    checkpoints: list[dict]
    """[{"iteration", "consumed_samples", "path", "name"}], in order; ``name`` (Megatron's
    ``<run_dir>/iter_0000100`` directory) is what records and the scores CSV call the checkpoint.
    With ``config.eval_at_start`` the first is the starting weights (saved before the first step),
    evaluated through ``HESNREvaluator.evaluate_at_start`` as the Megatron-LM hook does."""
    config: HESNRConfig
    """The evaluator's settings: the held-out set, the JSONL path, windows, micro-batches, metric."""
    extras_path: str
    """JSON file for the path taken, the cross-checks and the per-token top-1 flags."""
    seq_length: int
    padded_vocab_size: int
    num_documents: int | None = None
    """Evaluate only the first N trajectories of the set (the CPU budget); ``None``: all."""
    tp: int = 2
    log_level: int = logging.INFO
    check_all: bool = False
    """Cross-check at every checkpoint (default: the last only)."""
    work_dir: str = "."
    """Where the one-process gloo group keeps its rendezvous file."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_leading(prefix: str, num_documents: int | None = None):
    """The prepared set at ``prefix`` (checked against its manifest), or its first ``num_documents``."""
    from ..data.memory import MemoryDataset

    ds = open_prepared_dataset(prefix)
    if num_documents is None or num_documents >= len(ds):
        return ds
    # Copies: the arrays are views into megatron-core's memory map, closed with the dataset.
    items = [tuple(np.array(a) for a in ds[i]) for i in range(num_documents)]
    return MemoryDataset(items, 0, manifest=ds.manifest)


# --------------------------------------------------------------------------- per-token results
class TokenRecorder:
    """Token observer: the top-1 flag and NLL of every token the evaluator scored, by trajectory."""

    def __init__(self):
        self._parts: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, set_name, stats, mask, doc, target) -> None:
        sel = (mask != 0) & (doc >= 0)
        self._parts.append(tuple(t[sel].cpu() for t in (doc, target, stats.top1 & stats.valid, stats.logp)))

    def observed(self) -> bool:
        """Whether a pass ran since the last :meth:`take` (the same on every rank: each sees every window)."""
        return bool(self._parts)

    def take(self, lengths: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per trajectory of ``lengths`` tokens: (top-1 flags, NLL with NaN where not scored); resets."""
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        top1, nll = np.zeros(offsets[-1], dtype=bool), np.full(offsets[-1], np.nan)
        for doc, target, flags, logp in self._parts:
            at = offsets[doc.numpy()] + target.numpy()
            top1[at], nll[at] = flags.numpy(), -logp.double().numpy()
        self._parts = []
        return np.split(top1, offsets[1:-1]), np.split(nll, offsets[1:-1])


# --------------------------------------------------------------------------- cross-checks
@dataclass
class Checks:
    max_rel_diff_vs_single: float = 0.0
    """Largest |evaluator metric - one-process reference| / max(1, |reference|) over the headline metrics."""
    max_abs_diff_nll_vs_megatron_ce: float = float("nan")
    """Largest per-token |evaluator NLL - Megatron vocab-parallel CE| (padding columns masked; NaN: not run)."""


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


def cross_check(evaluator: HESNREvaluator, model: MegatronStyleGPT, topo: Topology, metrics: dict | None,
                nll: list[np.ndarray] | None, *, seq_length: int, batch_size: int, megatron: bool) -> Checks | None:
    """Every rank (Megatron's CE is a TP collective); the result on the writing rank, else ``None``.

    ``metrics`` / ``nll``: the evaluator's metrics and per-token NLL (writing rank).
    """
    (wset, vocab), = evaluator.sets
    writer = is_last_rank()
    metric = evaluator.config.metric
    ref = HESNRAccumulator(replace(metric, num_documents=wset.num_trajectories)) if writer else None
    ce_fn = None
    if megatron:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as ce_fn
    worst_ce = 0.0
    with torch.no_grad():
        for lo in range(0, len(wset.windows), batch_size):
            part = wset.windows[lo:lo + batch_size]
            rows = [window_sample(*(np.asarray(a) for a in wset.dataset[i]), w, seq_length) for i, w in part]
            x, y, m = (torch.from_numpy(np.stack(r)) for r in zip(*rows))
            docs = torch.tensor([i for i, _ in part])[:, None].expand_as(m)
            hidden = model.gpt.hidden(x)                                                  # [b, s, h], padded to seq
            if ref is not None:
                full = hidden @ model.gpt.output_weight.t()                               # one process, all columns
                ref.update(token_stats(full, y, k=metric.k, vocab_size=vocab, impl="torch"), m, docs)
            if ce_fn is None:
                continue
            # Megatron's CE covers the padded vocabulary: the padding columns get a huge negative
            # logit (finite, so a shard of only padding stays NaN-free) to compute the same quantity.
            local = model.output_layer(hidden.transpose(0, 1).contiguous())               # [s, b, V / TP]
            local[..., max(0, vocab - topo.tp_rank * local.shape[-1]):] = -1e30
            ce = ce_fn(local, y.t().contiguous()).t().double()                            # [b, s]
            if writer:
                for b, (i, w) in enumerate(part):
                    sel = np.flatnonzero(m[b].numpy())
                    diff = np.abs(ce[b, sel].numpy() - nll[i][w.start + 1 + sel])
                    # A token the reference scores and the evaluator did not is a failure, not a skip.
                    worst_ce = max(worst_ce, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
    if not writer:
        return None
    return Checks(max_rel_diff_vs_single=_compare(metrics, ref.compute()),
                  max_abs_diff_nll_vs_megatron_ce=worst_ce if ce_fn is not None else float("nan"))


# --------------------------------------------------------------------------- drivers
def _evaluate_all(job: EvalJob, topo: Topology, megatron: bool) -> None:
    forward_backward, schedule_context = schedule(megatron)
    recorder = TokenRecorder()
    evaluator = HESNREvaluator(job.config, topology=lambda: topo, forward_backward_func=forward_backward,
                               open_dataset=partial(open_leading, num_documents=job.num_documents),
                               token_observer=recorder)
    writer = is_last_rank()
    extras = {"path": path_name(topo.tp_size, megatron), "tp": topo.tp_size, "checkpoints": []}
    with schedule_context:
        for n, info in enumerate(job.checkpoints):
            t0 = time.perf_counter()
            gpt, _ = load_checkpoint(Path(info["path"]))
            model = MegatronStyleGPT.for_rank(gpt, tp_rank=topo.tp_rank, tp_size=topo.tp_size, megatron=megatron)
            ctx = EvalContext(iteration=info["iteration"], consumed_samples=info["consumed_samples"],
                              seq_length=job.seq_length, padded_vocab_size=job.padded_vocab_size,
                              run_dir=str(Path(info["name"]).parent), checkpoint=info["name"], skip_train=True)
            if job.config.eval_at_start and n == 0:
                # --hesnr-eval-at-start: the starting weights, once per run, set and iteration (a records
                # file that holds them already is left as it is; the evaluator says so).
                data = evaluator.evaluate_at_start(model, ctx)
                if not recorder.observed():
                    continue
            else:
                data = evaluator.evaluate(model, ctx)
            (wset, _), = evaluator.sets
            top1, nll = recorder.take([len(wset.dataset[i][0]) for i in range(wset.num_trajectories)])
            # The checks (a second, whole-vocabulary pass and Megatron's CE) cost as much as the
            # evaluation itself; one checkpoint shows the agreement.
            check = job.check_all or n == len(job.checkpoints) - 1
            metrics = data["sets"][wset.name]["metrics"] if writer else None
            checks = cross_check(evaluator, model, topo, metrics, nll, seq_length=job.seq_length,
                                 batch_size=job.config.micro_batch_size, megatron=megatron) if check else None
            if writer:
                extras["checkpoints"].append({"iteration": info["iteration"], "seconds": time.perf_counter() - t0,
                                              "checked": check, **asdict(checks or Checks()),
                                              "top1": [t.tolist() for t in top1]})
    if writer:
        with open(job.extras_path, "w", encoding="utf-8") as f:
            json.dump(extras, f)


def path_name(size: int, megatron: bool) -> str:
    """The evaluation path taken, as the demo prints it."""
    if size == 1:
        return ("single process (TP=1, whole vocabulary; megatron-core parallel_state over a 1-process gloo group, "
                "megatron-core's forward-only schedule)" if megatron else
                "single process (TP=1, whole vocabulary; the demo's forward-only schedule)")
    return (f"TP={size} over gloo (megatron-core parallel_state + ColumnParallelLinear output layer, "
            "megatron-core's forward-only schedule)" if megatron else
            f"TP={size} over gloo (torch.distributed, output layer sliced by hand, the demo's forward-only "
            "schedule; megatron-core not installed)")


def _evaluate_in_group(job: EvalJob, rank: int, size: int) -> None:
    """In an initialised gloo group of ``size`` processes (megatron-core's ``parallel_state`` when installed)."""
    import torch.distributed as dist

    cpu = torch.device("cpu")
    if not has_megatron_core():
        topo = Topology(tp_group=dist.group.WORLD if size > 1 else None, tp_rank=rank, tp_size=size, device=cpu)
        _evaluate_all(job, topo, False)
        return
    from megatron.core import parallel_state as ps

    from ..megatron_lm.compat import destroy_model_parallel
    from ..megatron_lm.topology import topology_from_parallel_state

    ps.initialize_model_parallel(tensor_model_parallel_size=size)
    try:
        _evaluate_all(job, topology_from_parallel_state(device=cpu), True)
    finally:
        destroy_model_parallel()  # this process may go on (--tp 1, tests): leave parallel_state clean


def _tp_worker(rank: int, job: EvalJob, port: int) -> None:
    import warnings

    import torch.distributed as dist

    logging.basicConfig(level=job.log_level if rank == job.tp - 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", message=".*Apex.*")
    warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS.*")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // job.tp))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=job.tp)
    try:
        _evaluate_in_group(job, rank, job.tp)
    finally:
        dist.destroy_process_group()


def _single_process(job: EvalJob) -> None:
    """One process: through megatron-core's schedule over a 1-process gloo group when it is
    installed (and a group can be made here), else the demo's stand-in schedule."""
    import torch.distributed as dist

    if has_megatron_core() and not dist.is_initialized():
        store = Path(job.work_dir) / "gloo_rendezvous"
        store.unlink(missing_ok=True)
        try:
            dist.init_process_group("gloo", init_method=f"file://{store.resolve()}", rank=0, world_size=1)
        except Exception as exc:  # announced, never silent
            log.warning("no 1-process gloo group (%s); evaluating without megatron-core's schedule", exc)
        else:
            try:
                _evaluate_in_group(job, 0, 1)
            finally:
                dist.destroy_process_group()
                store.unlink(missing_ok=True)
            return
    _evaluate_all(job, Topology(), False)


def run_evaluation(job: EvalJob) -> dict:
    """Evaluate every checkpoint of ``job`` into a new records file (``job.config.jsonl``, removed
    first: one demo run, one set of records); returns the extras (path taken, checks, top-1).

    ``job.tp > 1`` spawns that many gloo processes; if that fails (no loopback
    networking, a sandbox that forbids it) the single-process path is taken and the
    reason is logged.
    """
    records = Path(job.config.jsonl)
    records.unlink(missing_ok=True)
    if job.tp > 1:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_tp_worker, args=(job, free_port()), nprocs=job.tp, join=True)
            with open(job.extras_path, encoding="utf-8") as f:
                return json.load(f)
        except Exception as exc:  # the fallback is announced, never silent
            log.warning("TP=%d evaluation over gloo failed (%s); evaluating in one process instead",
                        job.tp, str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            records.unlink(missing_ok=True)
    _single_process(job)
    with open(job.extras_path, encoding="utf-8") as f:
        return json.load(f)
