"""JSONL evaluation records: one line per evaluation and named set.

Shape (read by ``hesnr report``)::

    {"iteration", "consumed_samples", "checkpoint", "run", "dataset", "time", "writer",
     "config", "metrics": acc.compute(), "state": acc.state_dict()}

``writer`` says which process wrote the record: ``{"job_id": SLURM_JOB_ID or null,
"restart": SLURM_RESTART_COUNT (0 if unset), "host", "pid"}``.  A requeued Slurm job keeps its
job id and counts restarts, so an iteration evaluated again after a restart is told apart
from the first evaluation (the readers keep the last record per run, set and iteration).
Records written before this field existed have no ``writer`` and stay valid.

The evaluation pass keeps per-trajectory sums, so ``metrics`` carries the ``*_stderr``
and ``num_documents`` and ``state`` the table ``trajectories`` (what ``hesnr compare``
pairs).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket

from ..metric.accumulator import HESNRAccumulator
from .config import HESNRConfig, flag_settings


def config_dict(config: HESNRConfig, **extra) -> dict:
    """The records' ``config``: every setting, flat (``metric.k`` is ``k``), in flag order, then ``extra``."""
    d = {}
    for s in flag_settings():
        value = s.get(config)
        if s.path == ("datasets",):
            value = [dataclasses.asdict(ds) for ds in value]
        d[s.key] = list(value) if isinstance(value, tuple) else value
    d.update(extra)
    return d


def writer_info(environ=None) -> dict:
    """The ``writer`` of a record: Slurm job id and restart count (from the environment), host, pid."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or None
    restart = env.get("SLURM_RESTART_COUNT", "").strip()
    try:
        restart_count = int(restart) if restart else 0
    except ValueError:
        raise ValueError(f"SLURM_RESTART_COUNT={restart!r} is not an integer") from None
    return {"job_id": job, "restart": restart_count, "host": socket.gethostname(), "pid": os.getpid()}


def make_record(*, iteration: int, consumed_samples: int | None, checkpoint: str | None, run: str | None,
                dataset: str, config: dict, acc: HESNRAccumulator, metrics: dict, when: float | None = None) -> dict:
    """One record; ``metrics`` is ``acc.compute()`` (already made by the pass's reduction)."""
    ts = datetime.datetime.now(datetime.timezone.utc) if when is None else \
        datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return {
        "iteration": int(iteration),
        "consumed_samples": None if consumed_samples is None else int(consumed_samples),
        "checkpoint": checkpoint,
        "run": run,
        "dataset": dataset,
        # ISO 8601 in UTC to the second, "Z": such strings sort by time (the report keeps the newest).
        "time": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "writer": writer_info(),
        "config": config,
        "metrics": metrics,
        "state": acc.state_dict(),
    }


#: Records files this process appends to -> the lock it holds on each (for its whole life).
_HELD: dict = {}
#: A holder on another host may be a node that died and whose network-file-system lock
#: has not expired yet (NFSv4 leases: 90 s by default): wait this long before refusing.
REMOTE_HOLDER_WAIT_S = 120.0


def claim_records(path: str):
    """Take (once per process) the lock that makes this process the one writer of ``path``:
    ``PATH.lock``, an exclusive ``flock`` that the kernel drops when the process dies, so a
    requeued or restarted job can append after its predecessor died. A second live writer
    raises :class:`~megatron_hesnr.atomic_write.LockedError` naming the holder."""
    from ..atomic_write import PathLock

    key = os.path.realpath(os.path.abspath(path))
    lock = _HELD.get(key)
    if lock is None:
        lock = PathLock(key + ".lock", f"records file {path}", wait_remote=REMOTE_HOLDER_WAIT_S).acquire()
        _HELD[key] = lock
    return lock


def release_records(path: str | None = None) -> None:
    """Stop being the writer of ``path`` (all records files: ``None``); the process's end does the same."""
    keys = list(_HELD) if path is None else [os.path.realpath(os.path.abspath(path))]
    for key in keys:
        lock = _HELD.pop(key, None)
        if lock is not None:
            lock.release()


def append_records(path: str, records: list[dict]) -> None:
    """Append whole lines and flush them to disk (a killed job leaves complete lines).

    The lines go out in one ``write`` on an ``O_APPEND`` descriptor, then ``fsync``; a
    write that fails half way (a full disk) is cut back to the file's former end. If
    the file does not end with a newline (a writer died in the middle of a line), the
    new lines start on a line of their own, so the torn line stays one bad line. Only
    one process appends to a records file at a time (:func:`claim_records`).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    claim_records(path)
    data = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)   # never leave half a line behind
            raise
    finally:
        os.close(fd)


def read_raw_records(path: str) -> list[dict]:
    """Every line of a records JSONL file as the dict that was written (NaN metrics
    round-trip as float NaN); nothing is validated -- the report reads records with
    :func:`megatron_hesnr.analysis.read_records`, which checks them."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON record ({exc})") from exc
    return out


def holds_score_id(path: str, score_id: str) -> bool:
    """Does ``path`` hold a whole record with ``config.score_id == score_id`` (a ``hesnr score`` run's)?

    Read line by line (memory: the longest line, never the whole file); lines that are not a JSON
    record (a torn line of an interrupted writer) are skipped, so a record is only taken as written
    when its line is whole."""
    needle = score_id.encode("utf-8")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return False
    with f:
        for line in f:
            if needle not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("config"), dict) \
                    and rec["config"].get("score_id") == score_id:
                return True
    return False


def recorded_keys(path: str) -> set[tuple]:
    """``{(run, dataset, iteration)}`` of the whole records in ``path``; a line that is not one
    (torn by a writer that died, or not JSON) holds no record and is passed over."""
    keys = set()
    with open(path, "rb") as f:
        for line in f:
            try:
                r = json.loads(line)
                keys.add((r["run"], r["dataset"], int(r["iteration"])))
            except (ValueError, KeyError, TypeError):
                continue
    return keys
