"""Length buckets and schedule calls of an evaluation pass (pure: numpy only, no Megatron).

A causal model gives a window the same logits whether or not padding follows it, so
windows need not be padded to ``--seq-length``: they are grouped into a few lengths
(few distinct shapes, so CUDA graphs and kernel plans are reused), each a multiple of
an alignment every layout accepts (or ``seq_length`` itself), and each bucket runs as
its own forward-only schedule calls.

For every bucket count up to :data:`MAX_BUCKETS`, dynamic programming over the distinct
aligned lengths finds the lengths that feed the fewest positions, counting the empty
samples that fill the last schedule call of a bucket; the plan takes the fewest buckets
that feed at most :data:`FED_TARGET` times the real inputs (on a log-normal set of
500 trajectories that is 8 lengths at 32K and about 30 at 128K, where windows spread
over a 20 times wider range).

:class:`ScheduleShape` cuts a bucket into schedule calls.  Every call has a micro-batch
count the schedule accepts: an interleaved pipeline needs whole rounds (``M >= N`` and
``M % N`` either 0 or ``>= PP``, ``N`` micro-batches per virtual stage group, ``PP`` by
default).  Slots of a call beyond the bucket's windows are *empty* samples (scoring
nothing); no call ever reads a window of another call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Most distinct sequence lengths one set is evaluated at.
MAX_BUCKETS = 32
#: The planner uses as few lengths as keep the positions fed within this factor of the
#: real inputs (or within 1% of the least the cap allows, when the target is out of reach).
FED_TARGET = 1.05
#: Default of ``--hesnr-length-multiple``: tensor-core friendly shapes.
DEFAULT_LENGTH_MULTIPLE = 128


def alignment(length_multiple: int, *, cp_size: int = 1, tp_size: int = 1, sequence_parallel: bool = False) -> int:
    """The multiple every bucket length must be: the user's, 2 x CP (CP split), TP (sequence parallel)."""
    a = int(length_multiple)
    if a < 1:
        raise ValueError(f"length multiple must be >= 1, got {length_multiple}")
    if cp_size > 1:
        a = math.lcm(a, 2 * cp_size)
    if sequence_parallel and tp_size > 1:
        a = math.lcm(a, tp_size)
    return a


@dataclass(frozen=True)
class ScheduleShape:
    """How windows go into one forward-only schedule call."""

    dp_size: int = 1
    micro_batch_size: int = 1
    num_microbatches: int = 4
    """Micro-batches per call when the bucket has enough windows."""
    pp_size: int = 1
    vp_group: int | None = None
    """Micro-batches per virtual-stage group under an interleaved schedule; ``None``: not interleaved."""

    def __post_init__(self):
        for name in ("dp_size", "micro_batch_size", "num_microbatches", "pp_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScheduleShape.{name} must be >= 1, got {getattr(self, name)}")
        if self.vp_group is not None and self.vp_group < self.pp_size:
            raise ValueError(f"an interleaved schedule needs >= PP={self.pp_size} micro-batches per group, "
                             f"got {self.vp_group}")

    @property
    def windows_per_microbatch(self) -> int:
        """Windows one micro-batch index holds over all data-parallel ranks."""
        return self.dp_size * self.micro_batch_size

    def valid_count(self, m):
        """The smallest micro-batch count ``>= m`` the schedule accepts (an int or an int array)."""
        m = np.maximum(np.asarray(m, dtype=np.int64), 1)
        n, pp = self.vp_group, self.pp_size
        if n is not None:
            m = np.maximum(m, n)
            r = m % n
            m = m + np.where((r > 0) & (r < pp), pp - r, 0)
        return int(m) if m.ndim == 0 else m

    @property
    def full_count(self) -> int:
        return self.valid_count(self.num_microbatches)

    def calls(self, num_windows: int) -> list[tuple[int, int, int]]:
        """``(first window, windows, micro-batches)`` of each call over ``num_windows`` windows."""
        per_mb = self.windows_per_microbatch
        full = self.full_count * per_mb
        out = []
        first = 0
        while first < num_windows:
            n = min(full, num_windows - first)
            out.append((first, n, self.valid_count(math.ceil(n / per_mb))))
            first += n
        return out

    def slots(self, num_windows: int) -> int:
        """Samples fed (windows plus empty fillers) for a bucket of ``num_windows``."""
        return sum(nmb for _, _, nmb in self.calls(num_windows)) * self.windows_per_microbatch

    def slot(self, microbatch: int, dp_rank: int, b: int) -> int:
        """Index within a call of sample ``b`` of micro-batch ``microbatch`` on ``dp_rank``."""
        return (microbatch * self.dp_size + dp_rank) * self.micro_batch_size + b


@dataclass(frozen=True)
class Bucket:
    length: int
    """Sequence length fed for every window of the bucket."""
    windows: tuple[int, ...]
    """Indices (into the set's window list) in the order they are fed."""


@dataclass(frozen=True)
class BucketPlan:
    buckets: tuple[Bucket, ...]
    seq_length: int
    alignment: int
    padded: bool
    """``True``: today's behaviour, every window padded to ``seq_length`` (``--hesnr-pad-to-seq-length``)."""
    shape: ScheduleShape
    real_inputs: int
    """Input positions that are real tokens, summed over windows."""
    min_attention: int
    """Sum over windows of (real inputs)^2: the attention work without any padding."""

    @property
    def positions_fed(self) -> int:
        return sum(b.length * self.shape.slots(len(b.windows)) for b in self.buckets)

    @property
    def attention_fed(self) -> int:
        return sum(b.length ** 2 * self.shape.slots(len(b.windows)) for b in self.buckets)

    @property
    def num_calls(self) -> int:
        return sum(len(self.shape.calls(len(b.windows))) for b in self.buckets)

    def summary(self) -> dict:
        """What the JSONL ``config`` records."""
        return {
            "padded": self.padded, "alignment": self.alignment,
            "lengths": [b.length for b in self.buckets], "windows": [len(b.windows) for b in self.buckets],
            "schedule_calls": self.num_calls, "positions_fed": self.positions_fed, "real_inputs": self.real_inputs,
            "fed_over_real": _ratio(self.positions_fed, self.real_inputs),
            "attention_over_min": _ratio(self.attention_fed, self.min_attention),
        }

    def describe(self) -> str:
        """The plan in one log line."""
        s = self.summary()
        pairs = " ".join(f"{n}x{L}" for L, n in zip(s["lengths"], s["windows"]))
        mode = "padded to --seq-length" if self.padded else f"{len(self.buckets)} length buckets (multiple of {self.alignment})"
        return (f"{mode}: {pairs or 'no windows'}; {s['schedule_calls']} schedule calls; positions fed "
                f"{s['positions_fed']} for {s['real_inputs']} real inputs ({s['fed_over_real']:.3f}x), "
                f"attention {s['attention_over_min']:.3f}x the unpadded minimum")


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def _candidate(n: np.ndarray, seq_length: int, align: int) -> np.ndarray:
    return np.minimum(-(-n // align) * align, seq_length)


def plan_buckets(num_inputs: Sequence[int], seq_length: int, *, align: int = 1, shape: ScheduleShape | None = None,
                 max_buckets: int = MAX_BUCKETS, padded: bool = False) -> BucketPlan:
    """Buckets for windows of ``num_inputs[i]`` real inputs each (``1 <= n <= seq_length``)."""
    shape = shape or ScheduleShape()
    n = np.asarray(num_inputs, dtype=np.int64).reshape(-1)
    if n.size and (n.min() < 1 or n.max() > seq_length):
        raise ValueError(f"window lengths must lie in [1, seq_length={seq_length}], got {n.min()}..{n.max()}")
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    real, attn = int(n.sum()), int((n * n).sum())
    if padded or not n.size:
        buckets = (Bucket(seq_length, tuple(range(n.size))),) if n.size else ()
        return BucketPlan(buckets, seq_length, align, padded, shape, real, attn)
    cand = _candidate(n, seq_length, align)
    lengths, counts = np.unique(cand, return_counts=True)
    cuts = _best_cuts(lengths, np.concatenate([[0], np.cumsum(counts)]), shape, max_buckets, real)
    # Windows go to the smallest chosen length that holds them, in their original order.
    chosen = lengths[cuts]
    which = np.searchsorted(chosen, cand)
    buckets = tuple(Bucket(int(L), tuple(int(i) for i in np.flatnonzero(which == b))) for b, L in enumerate(chosen))
    return BucketPlan(buckets, seq_length, align, False, shape, real, attn)


def _best_cuts(lengths: np.ndarray, cum: np.ndarray, shape: ScheduleShape, max_buckets: int,
               real_inputs: int) -> list[int]:
    """Indices of the distinct lengths to use as bucket lengths (the last one always)."""
    m = len(lengths)
    per_mb, full = shape.windows_per_microbatch, shape.full_count

    def slots(w: np.ndarray) -> np.ndarray:
        # Vectorised ScheduleShape.slots: full calls, then one shorter valid call.
        per_call = full * per_mb
        calls, rest = np.divmod(w, per_call)
        last = np.where(rest > 0, shape.valid_count(-(-rest // per_mb)), 0)
        return (calls * full + last) * per_mb

    inf = np.iinfo(np.int64).max // 4
    # cost[j]: least positions fed for the windows of the j shortest lengths with k buckets.
    cost = np.full(m + 1, inf, dtype=np.int64)
    cost[0] = 0
    back = np.zeros((max_buckets + 1, m + 1), dtype=np.int64)
    total = [inf]
    # fed[j - 1][i]: positions fed by one bucket of length lengths[j-1] holding lengths i+1 .. j.
    fed = [slots(cum[j] - cum[:j]) * int(lengths[j - 1]) for j in range(1, m + 1)]
    for k in range(1, max_buckets + 1):
        new = np.full(m + 1, inf, dtype=np.int64)
        for j in range(k, m + 1):
            c = np.where(cost[:j] >= inf, inf, cost[:j] + fed[j - 1])
            a = int(np.argmin(c))
            new[j], back[k, j] = c[a], a
        cost = new
        total.append(int(cost[m]))
    # As few shapes as reach the target (or come within 1% of the best the cap allows).
    goal = FED_TARGET * real_inputs
    if min(total) > goal:
        goal = 1.01 * min(total)
    best_k = next(k for k in range(1, max_buckets + 1) if total[k] <= goal)
    cuts, j = [], m
    for k in range(best_k, 0, -1):
        cuts.append(j - 1)
        j = int(back[k, j])
    return sorted(cuts)
