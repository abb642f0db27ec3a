"""Scoring prepared sets with an engine: windows in, the Megatron hook's records out.

An engine (:mod:`.hf`, :mod:`.vllm_offline`, :mod:`.server`) turns prompts (a window's tokens)
into :class:`~megatron_hesnr.metric.token_stats.TokenStats` of their targets; this module gives it the
windows trajectory by trajectory, adds each window's scored targets (category from the prepared
mask, trajectory index) to one :class:`HESNRAccumulator` per set -- exactly what the Megatron
pass adds -- keeps the progress file, and appends one record per set with
:func:`~megatron_hesnr.evaluation.records.make_record`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch

from ..metric.accumulator import HESNRAccumulator
from ..atomic_write import DeferSignals
from ..evaluation.config import HESNRConfig
from ..evaluation.records import append_records, config_dict, holds_score_id, make_record, release_records
from ..metric.token_stats import TENSOR_FIELDS, TokenStats
from .progress import Progress
from .sets import ScoreError, ScoreInterrupted, ScoreSet, manifest_digest, window_targets

log = logging.getLogger(__name__)

#: A unit of work: (trajectory index, the prompts of its windows).
Job = tuple[int, list[np.ndarray]]


class Engine(Protocol):
    kind: str
    """``hf``, ``vllm`` or ``server`` (recorded)."""
    checkpoint: str
    """What the records name as the checkpoint (the model directory, or the served model name)."""
    context_length: int
    """Most tokens one request may hold (the window plan's default comes from it)."""

    def score(self, jobs: Iterable[Job], k: int) -> Iterator[tuple[int, list[TokenStats]]]:
        """For each job, in any order, the stats of every window's targets ``1 .. len(prompt) - 1``."""


def default_seq_length(engine: Engine) -> int:
    """Inputs per window: the context less the window's last token and the one token a server generates."""
    return max(1, engine.context_length - 2)


def _jobs(s: ScoreSet, docs: list[int], windows: dict) -> Iterator[Job]:
    for doc in docs:
        tokens, mask = s.wset.dataset[doc]
        yield doc, [window_targets(tokens, mask, w)[0] for w in windows[doc]]


def _trajectory(s: ScoreSet, doc: int, windows, stats: list[TokenStats]) -> tuple[TokenStats, torch.Tensor]:
    """One trajectory's windows as one batch ``(stats, categories)``, every window checked first."""
    tokens, mask = s.wset.dataset[doc]
    if len(stats) != len(windows):
        raise ScoreError(f"set {s.name!r} trajectory {doc}: the engine returned {len(stats)} windows of {len(windows)}")
    masks = []
    for w, st in zip(windows, stats):
        _, score = window_targets(tokens, mask, w)
        if st.valid.shape != (len(score),):
            raise ScoreError(f"set {s.name!r} trajectory {doc}: the engine scored {tuple(st.valid.shape)} targets "
                             f"of a {w.end - w.start}-token window")
        masks.append(torch.from_numpy(score))
    joined = TokenStats(**{f: torch.cat([getattr(st, f) for st in stats]) for f in TENSOR_FIELDS}, k=stats[0].k)
    return joined, torch.cat(masks)


def _add(acc: HESNRAccumulator, progress: Progress, s: ScoreSet, doc: int, windows, stats: list[TokenStats]) -> None:
    """Trajectory ``doc`` enters the sums whole and is marked done with them, or not at all: its windows
    are checked and joined first, then added in one update with Ctrl-C / SIGTERM held back until it is
    marked done (a signal between two windows of a trajectory would leave part of it in the sums)."""
    st, m = _trajectory(s, doc, windows, stats)
    with DeferSignals():
        acc.update(st, m, torch.where(m > 0, doc, -1))
        progress.completed(s.name, doc, acc)


def expected_counts(s: ScoreSet, windows: dict) -> dict[int, int]:
    """Scored targets of each trajectory (what its row of the sums counts once it is done)."""
    out = {}
    for doc, ws in windows.items():
        tokens, mask = s.wset.dataset[doc]
        out[doc] = int(sum(int((window_targets(tokens, mask, w)[1] > 0).sum()) for w in ws))
    return out


def _progress_bar(total: int, initial: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="traj", file=sys.stderr, disable=None)


def identity(config: HESNRConfig, sets: list[ScoreSet], seq_length: int, engine: Engine,
             settings: dict | None = None) -> dict:
    """What a resumed run must share with the interrupted one: every setting that changes a number or a
    label of the records, by the flag that sets it (``settings``: the front end's own, e.g. ``--dtype``,
    ``--step``, ``--run-name``, the model's fingerprint)."""
    m = config.metric
    return {"engine": engine.kind, "checkpoint": engine.checkpoint, "--seq-length": seq_length,
            "--long-policy": config.long_policy, "--window-stride": config.window_stride,
            "--k": m.k, "--threshold": m.threshold, "--num-bins": m.num_bins,
            "--category-names": list(m.category_names),
            "skip_empty_windows": config.skip_empty_windows,
            "sets": {s.name: manifest_digest(s) for s in sets}, **(settings or {})}


def _save(progress: Progress) -> None:
    try:
        progress.save()
    except OSError as exc:
        raise ScoreError(f"{progress.path}: cannot save the progress ({exc.strerror or exc}); the last saved "
                         "progress is kept: free space (or fix the folder) and rerun the same command to "
                         "continue") from None


def score_sets(engine: Engine, sets: list[ScoreSet], config: HESNRConfig, *, seq_length: int, out: str,
               run: str | None, step: int, engine_config: dict | None = None,
               settings: dict | None = None) -> list[dict]:
    """Score every set, append the records to ``out`` and return them (resuming from the progress file).

    ``settings``: the front end's settings that change a number or a label (part of the resume check)."""
    progress = Progress(out, identity(config, sets, seq_length, engine, settings))
    try:
        if progress.resumed:
            n = sum(len(d) for d in progress.done.values())
            log.info("resuming from %s: %d trajectories already scored", progress.path, n)
        records = []
        for s in sets:
            t0 = time.perf_counter()
            fresh = HESNRAccumulator(dataclasses.replace(config.metric, num_documents=s.wset.num_trajectories))
            windows = s.trajectory_windows()
            acc = progress.accumulator(s.name, fresh, lambda: expected_counts(s, windows))
            done = progress.done[s.name]
            todo = [d for d in sorted(windows) if d not in done]
            bar = _progress_bar(len(windows), len(windows) - len(todo), f"hesnr score {s.name}")
            try:
                for doc, stats in engine.score(_jobs(s, todo, windows), config.metric.k):
                    if doc in done:
                        raise ScoreError(f"set {s.name!r}: trajectory {doc} came back twice from the engine")
                    _add(acc, progress, s, doc, windows[doc], stats)
                    progress.maybe_save()
                    if bar is not None:
                        bar.update(1)
            except BaseException as exc:
                _save(progress)
                if not isinstance(exc, (ScoreError, KeyboardInterrupt)):
                    raise
                total = sum(len(d) for d in progress.done.values())
                msg = "interrupted" if not isinstance(exc, ScoreError) else \
                    str(exc) if str(exc).startswith("set ") else f"set {s.name!r}: {exc}"
                raise (ScoreError if isinstance(exc, ScoreError) else ScoreInterrupted)(
                    f"{msg}; {total} scored trajectories are kept in {progress.path}: rerun the same "
                    "command to continue") from None
            finally:
                if bar is not None:
                    bar.close()
            _save(progress)
            missing = sorted(set(windows) - done)
            if missing:
                raise ScoreError(f"set {s.name!r}: trajectories {missing[:5]} were never scored")
            metrics = acc.compute()
            records.append(make_record(
                iteration=step, consumed_samples=None, checkpoint=engine.checkpoint, run=run, dataset=s.name,
                acc=acc, metrics=metrics,
                config=config_dict(config, seq_length=seq_length, data=s.wset.summary(),
                                   eval_seconds=time.perf_counter() - t0,
                                   engine={"kind": engine.kind, **(engine_config or {})},
                                   score_id=progress.score_id)))
        # A fresh score id cannot be in the file yet; a resumed run's records may be (a run killed between
        # the append and the progress file's removal): looked up line by line, torn lines skipped.
        if progress.resumed and holds_score_id(out, progress.score_id):
            log.info("%s already holds these records (score_id %s): not appended again", out, progress.score_id)
        else:
            try:
                append_records(out, records)
            except OSError as exc:
                raise ScoreError(f"--jsonl {out}: cannot append the records ({exc.strerror or exc}); the scored "
                                 f"sums are kept in {progress.path}: free space (or fix the folder) and rerun the "
                                 "same command to write them") from None
        progress.finish()
        return records
    finally:
        progress.close()
        # A scoring run is the records file's writer for its own duration only (a training job
        # stays the writer for its life): another run may append once this one has returned.
        release_records(out)
