"""The progress file beside ``--jsonl OUT``: what an interrupted scoring run has already done.

``OUT.progress.json`` holds, per set, the accumulator state summed over the trajectories
completed so far and their indices; it is rewritten whole (temporary file + rename) after
trajectories complete, so a kill leaves either the old or the new file, never a mix. A
trajectory enters the sums whole, in the same step that marks it done (the driver holds
Ctrl-C back for that step), so the file never holds part of a trajectory; one in flight is
scored again by the rerun.

Its ``identity`` (sets, model, metric, window and engine settings, ``--step`` and
``--run-name``) must match the rerun's, or the rerun is refused with one line naming each
setting that differs, its old and new value. The file is checked whole before it is used:
its shape, every done entry (an index of a trajectory of the set, listed once), the state,
and that the stored sums count exactly the scored targets of the done trajectories and of
no other; anything else is refused in one line naming the file.

A lock file (``OUT.progress.lock``, ``flock``) refuses a second writer. After the records are
appended the file is removed; the records carry its ``score_id``, so a run killed between the
two does not append them twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid

from ..metric.accumulator import HESNRAccumulator
from .sets import ScoreError

_SCORE_ID = re.compile(r"[0-9a-f]{32}")


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def identity_diff(old: dict, new: dict) -> list[str]:
    """``"SETTING OLD then, NEW now"`` for every setting that differs (nested ones as ``a.b``)."""
    a, b = _flat(old), _flat(new)
    return [f"{k} {_show(a.get(k))} then, {_show(b.get(k))} now"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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

    def _refuse(self, why: str) -> ScoreError:
        return ScoreError(f"{self.path}: {why}; remove it to start over")

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError) as exc:
            raise self._refuse(f"unreadable progress file ({exc})") from None
        if not isinstance(d, dict) or set(d) != {"identity", "score_id", "sets"}:
            raise self._refuse("not a progress file (want the fields identity, score_id, sets)")
        ident, sets, score_id = d["identity"], d["sets"], d["score_id"]
        if not isinstance(ident, dict) or not isinstance(sets, dict):
            raise self._refuse("'identity' and 'sets' must be objects")
        if not isinstance(score_id, str) or not _SCORE_ID.fullmatch(score_id):
            raise self._refuse(f"'score_id' must be 32 hex digits, got {score_id!r}")
        if ident != self.identity:
            diff = "; ".join(identity_diff(ident, self.identity))
            raise ScoreError(f"{self.path}: left by a run with other settings ({diff}); rerun that command to "
                             "finish it, or remove the file to start over")
        known = set(self.identity.get("sets") or {})
        for name, s in sets.items():
            if name not in known:
                raise self._refuse(f"set {name!r} is not one of this run's sets")
            if not isinstance(s, dict) or set(s) != {"done", "state"} or not isinstance(s["state"], dict):
                raise self._refuse(f"set {name!r} must be an object with 'done' (a list) and 'state' (an object)")
            done = s["done"]
            if not isinstance(done, list) or not all(type(i) is int and i >= 0 for i in done):
                bad = done if not isinstance(done, list) else next(i for i in done if not (type(i) is int and i >= 0))
                raise self._refuse(f"set {name!r}: 'done' holds {bad!r}, not a trajectory index")
            if len(set(done)) != len(done):
                twice = sorted({i for i in done if done.count(i) > 1})
                raise self._refuse(f"set {name!r}: 'done' lists trajectories {twice[:5]} more than once")
            self.done[name] = set(done)
            self.states[name] = s["state"]
        self.score_id = score_id
        self.resumed = True

    def accumulator(self, name: str, fresh: HESNRAccumulator, expected=None) -> HESNRAccumulator:
        """The set's accumulator: ``fresh`` with the saved sums loaded, if any.

        ``expected() -> {trajectory: scored targets}`` (every trajectory the set scores): the saved sums
        must count exactly these targets for each done trajectory and none for the others."""
        if name in self.states:
            try:
                fresh.load_state_dict(self.states[name])
            except ValueError as exc:
                raise self._refuse(f"set {name!r}: {exc}") from None
            if expected is not None:
                self._check_counts(name, fresh, expected())
        self.done.setdefault(name, set())
        self._accs[name] = fresh
        return fresh

    def _check_counts(self, name: str, acc: HESNRAccumulator, expected: dict[int, int]) -> None:
        from ..metric.state_layout import SCALAR_FIELDS

        done = self.done.get(name, set())
        stray = sorted(done - set(expected))
        if stray:
            raise self._refuse(f"set {name!r}: 'done' holds {stray[:5]}, not trajectories this set scores")
        cols = [SCALAR_FIELDS.index("num_tokens"), SCALAR_FIELDS.index("num_invalid")]
        if acc.trajectories is None:
            raise self._refuse(f"set {name!r}: the state has no per-trajectory sums")
        counts = acc.trajectories[:, :, cols].sum(dim=(1, 2)).tolist()
        total = float(acc.scalars[:, cols].sum())
        for doc, n in enumerate(counts):
            want = expected.get(doc, 0) if doc in done else 0
            if n != want:
                what = "done" if doc in done else "not done"
                raise self._refuse(f"set {name!r}: trajectory {doc} is {what} but the sums count {n:g} of its "
                                   f"targets, not {want}: the done list and the sums disagree")
        if total != sum(counts):
            raise self._refuse(f"set {name!r}: the sums count {total:g} targets but their trajectories "
                               f"{sum(counts):g}")

    def completed(self, name: str, doc: int, acc: HESNRAccumulator) -> None:
        """Trajectory ``doc`` of set ``name`` is in ``acc`` (the live accumulator)."""
        self.done[name].add(int(doc))
        self._accs[name] = acc

    def maybe_save(self) -> None:
        if time.monotonic() - self._last_save >= self.save_every_s:
            self.save()

    def save(self) -> None:
        """Rewrite the file (temporary file + rename); on any failure the temporary file is removed and
        the former file stands."""
        sets = {}
        for name, acc in self._accs.items():
            sets[name] = {"done": sorted(self.done[name]), "state": acc.state_dict()}
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"identity": self.identity, "score_id": self.score_id, "sets": sets}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
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
