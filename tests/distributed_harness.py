"""Multi-process gloo worlds on CPU for the distributed tests, and their shared data.

Ranks are *forked* from the test process: torch (and megatron-core, when a test
imported it first) are already loaded, so a 4-rank world starts in about a
second instead of re-importing everything per rank.  Each rank's return value
comes back pickled through ``tmp_path``; an exception in any rank fails the
test with that rank's traceback (the other ranks are killed 5 s later, as they may
be waiting in a collective), and a hung world is killed after ``timeout``.

It is the only way the tests start worlds: a test over several layouts runs one
world per layout (``pytest.mark.parametrize``), or one world whose per-layout
results are checked by a parametrized test, so a failing layout is named in the id.
"""
from __future__ import annotations

import math
import multiprocessing
import pickle
import time
import traceback
from pathlib import Path

import torch

import megatron_hesnr as mh


def _entry(fn, rank, world_size, init_file, out_dir, args):
    result_path = Path(out_dir) / f"rank{rank}.pkl"
    try:
        import torch.distributed as dist

        torch.set_num_threads(1)  # 4 ranks share 2 cores
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
        )
        value = fn(rank, world_size, *args)
        dist.barrier()
        dist.destroy_process_group()
        payload = ("ok", value)
    except BaseException:  # noqa: BLE001 - report anything to the parent
        payload = ("error", traceback.format_exc())
    with open(result_path, "wb") as f:
        pickle.dump(payload, f)


def run_world(fn, world_size: int, tmp_path: Path, *args, timeout: float = 180.0) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; per-rank results."""
    ctx = multiprocessing.get_context("fork")
    out_dir = Path(tmp_path) / f"world_{time.monotonic_ns()}"
    out_dir.mkdir(parents=True)
    init_file = out_dir / "init"
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, str(init_file), str(out_dir), args))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    failed_at = None
    while any(p.is_alive() for p in procs):
        if failed_at is None and any((out_dir / f"rank{r}.pkl").exists() and _is_error(out_dir / f"rank{r}.pkl")
                                     for r in range(world_size)):
            failed_at = time.monotonic()  # others may wait forever in a collective
        if time.monotonic() > deadline or (failed_at and time.monotonic() > failed_at + 5):
            break
        time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    results, errors = [], []
    for r in range(world_size):
        path = out_dir / f"rank{r}.pkl"
        if not path.exists():
            errors.append(f"rank {r}: no result (killed after timeout or by a failing peer)")
            results.append(None)
            continue
        status, value = pickle.loads(path.read_bytes())
        if status == "error":
            errors.append(f"rank {r} raised:\n{value}")
        results.append(value)
    if errors:
        raise AssertionError("distributed world failed:\n" + "\n".join(errors))
    return results


def run_layouts(layouts: dict, per_layout, world_size: int, tmp_path: Path, *args) -> list[dict]:
    """One world in which every rank calls ``per_layout(rank, layout, *args)`` for each
    entry of ``layouts`` (every rank must walk them in the same order: they create groups);
    per rank, ``{layout name: result}`` for a test parametrized over the names."""
    def world(rank, _world_size):
        return {name: per_layout(rank, layout, *args) for name, layout in layouts.items()}

    return run_world(world, world_size, tmp_path)


def _is_error(path: Path) -> bool:
    try:
        return pickle.loads(path.read_bytes())[0] == "error"
    except Exception:  # partially written
        return False


# ---------------------------------------------------------------- shared data
def make_batch(seed: int, batch: int, seq: int, vocab: int, padded: int | None = None):
    """fp32 logits ``[batch, seq, padded]``, labels and a category mask ``[batch, seq]``.

    Logits mix flat rows, rows with 2-4 dominant candidates (H_k near ln 2..ln 4,
    so the high-entropy set is not empty) and peaked rows; labels mostly hit a
    candidate, some are -100 (unscorable).  Columns >= ``vocab`` are Megatron's
    padding and hold large values that would win every statistic if not masked.
    """
    g = torch.Generator().manual_seed(seed)
    padded = padded or vocab
    logits = torch.randn(batch, seq, padded, generator=g) * 2.0
    n_cand = torch.randint(1, 5, (batch, seq), generator=g)
    cand = torch.stack([torch.randperm(vocab, generator=g)[:4] for _ in range(batch * seq)]).view(batch, seq, 4)
    boost = torch.rand(batch, seq, 4, generator=g) * 1.5 + 8.0
    boost = boost * (torch.arange(4)[None, None, :] < n_cand[..., None])
    logits.scatter_add_(2, cand, boost)
    pick = torch.randint(0, 4, (batch, seq), generator=g).clamp_max(n_cand - 1)
    labels = cand.gather(2, pick[..., None]).squeeze(2)
    rand_labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < 0.25, rand_labels, labels)
    labels[torch.rand(batch, seq, generator=g) < 0.05] = -100
    if padded > vocab:
        logits[..., vocab:] = 40.0
    mask = torch.randint(0, 4, (batch, seq), generator=g)
    return logits, labels, mask


def reference(logits, labels, mask, vocab: int, k: int = mh.DEFAULT_K):
    """Single-process statistics and accumulator on the whole (unpadded) vocabulary."""
    stats = mh.token_stats(logits[..., :vocab].contiguous(), labels, k=k, impl="torch")
    acc = mh.HESNRAccumulator(k=k)
    acc.update(stats, mask)
    return stats, acc


def tp_slice(logits, tp_rank: int, tp_size: int):
    """The vocabulary shard of TP rank ``tp_rank`` (contiguous, equal widths)."""
    width = logits.shape[-1] // tp_size
    return logits[..., tp_rank * width:(tp_rank + 1) * width].contiguous()


def stats_dict(stats) -> dict:
    return {name: getattr(stats, name).clone() for name in ("entropy", "logp", "logq", "in_topk", "top1", "valid")}


def assert_stats_match(got: dict, ref, what: str = "") -> None:
    """Top-k based fields are exact copies; log p carries only fp32 sum-exp rounding."""
    for name in ("entropy", "logq", "in_topk", "top1", "valid"):
        torch.testing.assert_close(got[name], getattr(ref, name), rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, n=name: f"{what} {n}: {m}")
    torch.testing.assert_close(got["logp"], ref.logp, rtol=1e-6, atol=1e-6, equal_nan=True,
                               msg=lambda m: f"{what} logp: {m}")


def assert_state_match(got: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Accumulator sums: counts exact, sums within 1e-6 relative; the absolute 1e-6
    covers near-empty histogram bins, whose sums carry log p's fp32 rounding."""
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"{what} accumulator: {m}")


#: Relative tolerance of the ``*_stderr`` metrics: a standard error sums squared residuals
#: ``y_i - R x_i`` that cancel, so the sums' fp32 rounding (1e-7) can grow ~100x in it.
STDERR_REL = 1e-4


def assert_metrics_match(got: dict, ref: dict, what: str = "") -> None:
    """Every metric of ``compute()`` within 1e-6 relative (counts exactly; stderrs :data:`STDERR_REL`)."""
    assert got.keys() == ref.keys(), what
    for key, value in ref.items():
        if isinstance(value, dict):
            assert_metrics_match(got[key], value, f"{what}.{key}")
        elif key.endswith("_stderr") and isinstance(value, float) and math.isfinite(value):
            assert got[key] == _approx_rel(value, STDERR_REL), f"{what}.{key}"
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), f"{what}.{key}: {got[key]} != NaN"
        elif value is None:  # e.g. num_documents without per-trajectory sums
            assert got[key] is None, f"{what}.{key}: {got[key]} != None"
        else:
            assert got[key] == _approx(value), f"{what}.{key}"


def _approx(value):
    return _approx_rel(value, 1e-6)


def _approx_rel(value, rel: float):
    import pytest

    return pytest.approx(value, rel=rel, abs=1e-12)


def contiguous_partition(world_size: int, size: int) -> list[list[int]]:
    """Ranks cut into consecutive groups of ``size`` (a shorter last group if needed)."""
    return [list(range(i, min(i + size, world_size))) for i in range(0, world_size, size)]


def layout_groups(layout, rank: int, batch: int):
    """This rank's ``Topology``, batch rows and TP place under an explicit layout
    ``(tp partition, cp partition, reduce partition, dp index of rank)``; every rank
    must call it (it creates the groups)."""
    from megatron_hesnr.evaluation import Topology

    tp_part, cp_part, red_part, dp_of = layout
    tp_group, tp_ranks = new_groups(tp_part, rank)
    _, cp_ranks = new_groups(cp_part, rank)
    red_group, red_ranks = new_groups(red_part, rank)
    dp_size = len(red_ranks) // len(cp_ranks)
    rows = slice(dp_of(rank) * batch // dp_size, (dp_of(rank) + 1) * batch // dp_size)
    groups = Topology(tp_group=tp_group if len(tp_ranks) > 1 else None, tp_rank=tp_ranks.index(rank),
                      tp_size=len(tp_ranks), reduce_group=red_group if len(red_ranks) > 1 else None,
                      dp_rank=dp_of(rank), dp_size=dp_size, cp_rank=cp_ranks.index(rank), cp_size=len(cp_ranks))
    return groups, rows, tp_ranks.index(rank), len(tp_ranks)


def layout_token_stats(layout, rank: int, vocab: int, logits, labels, *more):
    """Under ``layout`` (see :func:`layout_groups`; every rank must call it): this rank's
    groups and batch rows, its CP chunk of those rows of ``logits``, ``labels`` and every
    tensor in ``more``, and ``token_stats`` of its TP vocabulary shard of the logits."""
    from megatron_hesnr.evaluation.context_parallel import split_for_context_parallel

    groups, rows, tp_rank, tp_size = layout_groups(layout, rank, logits.shape[0])
    local = [split_for_context_parallel(t[rows], groups.cp_rank, groups.cp_size) for t in (logits, labels, *more)]
    stats = mh.token_stats(tp_slice(local[0], tp_rank, tp_size), local[1], vocab_size=vocab, tp_group=groups.tp_group,
                           impl="torch")
    return groups, rows, local, stats


def new_groups(partition: list[list[int]], rank: int):
    """Create every group of ``partition`` (all ranks must) and return this rank's."""
    import torch.distributed as dist

    mine = None
    for ranks in partition:
        g = dist.new_group(ranks)
        if rank in ranks:
            mine = (g, ranks)
    return mine
