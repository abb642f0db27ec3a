"""The progress file beside ``--jsonl OUT``: what an interrupted scoring run has already done.

``OUT.progress.json`` holds, per set, the accumulator state summed over the trajectories
completed so far and their indices; it is rewritten whole (temporary file + rename) after
trajectories complete, so a kill leaves either the old or the new file, never a mix: a
trajectory counts once it is in both the state and the list, and one in flight is scored
again by the rerun.  Its ``identity`` (sets, model, metric and window settings) must match
the rerun's, or the rerun is refused.  A lock file (``OUT.progress.lock``, ``flock``) refuses
a second writer.  After the records are appended the file is removed; the records carry its
``score_id``, so a run killed between the two does not append them twice.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import uuid

from ..accumulator import HESNRAccumulator
from .sets import ScoreError


class Progress:
    def __init__(self, out: str, identity: dict, *, save_every_s: float = 2.0):
        self.path = out + ".progress.json"
        self.identity = identity
        self.save_every_s = save_every_s
        self._lock_path = out + ".progress.lock"
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        self._lock = open(self._lock_path, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ScoreError(f"--jsonl {out}: another `hesnr score` is writing it ({self._lock_path} is locked)") from None
        self.score_id = uuid.uuid4().hex
        self.done: dict[str, set[int]] = {}
        self.states: dict[str, dict] = {}
        self.resumed = False
        self._accs: dict[str, HESNRAccumulator] = {}
        self._last_save = 0.0
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                d = json.load(f)
            ident, sets = d["identity"], d["sets"]
            score_id = d["score_id"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ScoreError(f"{self.path}: unreadable progress file ({exc}); remove it to start over") from None
        if ident != self.identity:
            diff = sorted(k for k in set(ident) | set(self.identity) if ident.get(k) != self.identity.get(k))
            raise ScoreError(f"{self.path}: left by a run with other settings ({', '.join(diff)} differ); rerun "
                             "that command to finish it, or remove the file to start over")
        self.score_id = score_id
        for name, s in sets.items():
            self.done[name] = set(int(i) for i in s["done"])
            self.states[name] = s["state"]
        self.resumed = True

    def accumulator(self, name: str, fresh: HESNRAccumulator) -> HESNRAccumulator:
        """The set's accumulator: ``fresh`` with the saved sums loaded, if any."""
        if name in self.states:
            try:
                fresh.load_state_dict(self.states[name])
            except ValueError as exc:
                raise ScoreError(f"{self.path}: set {name!r}: {exc}; remove it to start over") from None
        self.done.setdefault(name, set())
        self._accs[name] = fresh
        return fresh

    def completed(self, name: str, doc: int, acc: HESNRAccumulator, *, force: bool = False) -> None:
        """Trajectory ``doc`` of set ``name`` is in ``acc`` (the live accumulator)."""
        self.done[name].add(int(doc))
        self._accs[name] = acc
        if force or time.monotonic() - self._last_save >= self.save_every_s:
            self.save()

    def save(self) -> None:
        sets = {}
        for name, acc in self._accs.items():
            sets[name] = {"done": sorted(self.done[name]), "state": acc.state_dict()}
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"identity": self.identity, "score_id": self.score_id, "sets": sets}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._last_save = time.monotonic()

    def finish(self) -> None:
        """Records are written: the progress file goes (and the lock file, still held)."""
        for path in (self.path, self._lock_path):
            if os.path.exists(path):
                os.remove(path)

    def close(self) -> None:
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        finally:
            self._lock.close()
