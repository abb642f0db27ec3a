"""A record's accumulator state as numpy arrays: validated and queried without torch.

``hesnr report`` and ``hesnr compare`` read thousands of saved states
(``HESNRAccumulator.state_dict()`` in JSON).  :func:`parse_state` checks one with the
rules of :mod:`megatron_hesnr.metric.state_check` (a test runs both on the same corrupt
states) and keeps it as float64 arrays; :class:`RecordState` answers the same
questions as the accumulator (``sums``, ``histogram``, ``sweep``, ``uncertainty``,
``trajectory_rows``) from them.  The per-trajectory table is kept only for the
categories that have tokens, one ``[num_documents, fields]`` array each, built
from the JSON lists after their length was checked against ``num_documents``:
nothing is allocated from a size the record merely claims.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..metric.state_layout import (BIN_FIELDS, SCALAR_FIELDS, STATE_VERSION, AccumulatorConfig, metrics_from_sums,
                             sweep_histogram)
from ..metric.stderr import stderr_metrics

STATE_KEYS = ("version", "config", "scalar_fields", "bin_fields", "scalars", "hist", "reduced")
CONFIG_KEYS = ("k", "threshold", "num_bins", "category_names")
TABLE_KEY = "trajectories"
SCALAR_COUNTS = ("num_tokens", "num_invalid", "num_top1", "num_in_topk", "num_high_entropy")
BIN_COUNTS = ("count", "count_in_topk")
_F = {n: i for i, n in enumerate(SCALAR_FIELDS)}
_B = {n: i for i, n in enumerate(BIN_FIELDS)}
_COUNT_COLS = [_F[n] for n in SCALAR_COUNTS]
_REL = 1e-6


class StateInvalid(ValueError):
    """A saved state that cannot be used; the message names the field."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _keys(d, expected, where: str, optional=()) -> None:
    if not isinstance(d, dict):
        raise StateInvalid(f"{where} must be an object, got {type(d).__name__}")
    missing = [k for k in expected if k not in d]
    extra = sorted(str(k) for k in d if k not in expected and k not in optional)
    if missing or extra:
        raise StateInvalid(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])))


def _config(cfg) -> AccumulatorConfig:
    _keys(cfg, CONFIG_KEYS, "state config", ("num_documents",))
    for name in ("k", "num_bins"):
        if not _is_int(cfg[name]):
            raise StateInvalid(f"state config.{name} must be an integer, got {cfg[name]!r}")
    if "num_documents" in cfg and not _is_int(cfg["num_documents"]):
        raise StateInvalid(f"state config.num_documents must be an integer, got {cfg['num_documents']!r}")
    if not _is_number(cfg["threshold"]) or not math.isfinite(cfg["threshold"]):
        raise StateInvalid(f"state config.threshold must be a finite number, got {cfg['threshold']!r}")
    names = cfg["category_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise StateInvalid(f"state config.category_names must be a list of non-empty strings, got {names!r}")
    if cfg["num_bins"] > 1 << 20:
        raise StateInvalid(f"state config.num_bins {cfg['num_bins']} is not a histogram this project writes")
    key = (cfg["k"], cfg["threshold"], cfg["num_bins"], tuple(names), cfg.get("num_documents"))
    shared = _CONFIGS.get(key)
    if shared is not None:
        return shared
    try:
        made = AccumulatorConfig(k=cfg["k"], threshold=cfg["threshold"], num_bins=cfg["num_bins"],
                                 category_names=tuple(names), num_documents=cfg.get("num_documents"))
    except (TypeError, ValueError) as exc:
        raise StateInvalid(f"state config: {exc}") from None
    if len(_CONFIGS) < 4096:
        _CONFIGS[key] = made
    return made


#: Configs and bin edges shared by the records that have them (a report of a million records
#: holds one of each per distinct config, not one per record). Read-only by convention / flag.
_CONFIGS: dict[tuple, AccumulatorConfig] = {}
_EDGES: dict[tuple, np.ndarray] = {}


def _edges_of(config: AccumulatorConfig) -> np.ndarray:
    key = (config.k, config.num_bins)
    edges = _EDGES.get(key)
    if edges is None:
        edges = config.bin_edges_np()
        edges.flags.writeable = False
        if len(_EDGES) < 4096:
            _EDGES[key] = edges
    return edges


def _nested(value, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Nested lists of numbers (no booleans) of exactly ``shape`` -> float64 array."""
    def walk(v, depth: int, path: str):
        if depth == len(shape):
            if not _is_number(v):
                raise StateInvalid(f"state {name}{path} must be a number, got {v!r}")
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            got = f"a list of {len(v)}" if isinstance(v, list) else type(v).__name__
            raise StateInvalid(f"state {name}{path} must be a list of {shape[depth]}, got {got} "
                               f"(expected shape {shape})")
        for i, x in enumerate(v):
            walk(x, depth + 1, f"{path}[{i}]")

    try:  # fast path: a well-formed table is one numpy conversion and one pass over the leaf types
        arr = np.array(value)
        leaves = value
        for _ in range(len(shape) - 1):
            leaves = itertools.chain.from_iterable(leaves)
        ok = arr.shape == shape and arr.dtype.kind in "iuf" and not ({type(x) for x in leaves} - {int, float})
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok:
        return arr.astype(np.float64, copy=False)
    walk(value, 0, "")  # names the offending entry
    try:
        return np.array(value, dtype=np.float64).reshape(shape)
    except OverflowError:
        raise StateInvalid(f"state {name} holds a number beyond float64") from None


def _check_sums(cfg: AccumulatorConfig, scalars: np.ndarray, hist: np.ndarray) -> None:
    for name, t in (("scalars", scalars), ("hist", hist)):
        if not np.isfinite(t).all():
            raise StateInvalid(f"state {name} holds non-finite values")
        if (t < 0).any():
            raise StateInvalid(f"state {name} holds negative sums or counts")
    f = {n: scalars[:, i] for n, i in _F.items()}
    b = {n: hist[:, :, i] for n, i in _B.items()}
    for name in SCALAR_COUNTS:
        if (f[name] != np.floor(f[name])).any():
            raise StateInvalid(f"state scalars.{name} holds fractional counts")
    for name in BIN_COUNTS:
        if (b[name] != np.floor(b[name])).any():
            raise StateInvalid(f"state hist.{name} holds fractional counts")

    def rule(ok: np.ndarray, text: str):
        bad = np.flatnonzero(~ok)
        if len(bad):
            raise StateInvalid(f"state: {text} (category {cfg.category_names[int(bad[0])]!r})")

    rule(f["num_top1"] <= f["num_in_topk"], "num_top1 > num_in_topk")
    rule(f["num_in_topk"] <= f["num_tokens"], "num_in_topk > num_tokens")
    rule(f["num_high_entropy"] <= f["num_in_topk"], "num_high_entropy > num_in_topk")
    rule(b["count"].sum(1) == f["num_tokens"], "histogram count does not sum to num_tokens")
    rule(b["count_in_topk"].sum(1) == f["num_in_topk"], "histogram count_in_topk does not sum to num_in_topk")
    rule((b["count_in_topk"] <= b["count"]).all(1), "a histogram bin has count_in_topk > count")
    bound = f["num_tokens"] * math.log(cfg.k)
    rule(f["sum_entropy"] <= bound * (1 + _REL) + _REL, "sum_entropy > num_tokens * ln k")
    bound = f["num_high_entropy"] / cfg.threshold
    for name in ("sum_p_over_h", "sum_q_over_h"):
        rule(f[name] <= bound * (1 + _REL) + _REL, f"{name} > num_high_entropy / threshold")


def _column(values, n: int, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise StateInvalid(f"state '{where}' is not a list of numbers")
    if len(values) != n:
        # Checked before any array is built: a claimed num_documents allocates nothing.
        raise StateInvalid(f"state '{where}' has {len(values)} entries, expected num_documents = {n}")
    try:
        col = np.array(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StateInvalid(f"state '{where}' is not a list of numbers ({exc})") from None
    if col.ndim != 1 or col.dtype.kind not in "biuf":
        raise StateInvalid(f"state '{where}' is not a list of numbers")
    return col


def _table(d, cfg: AccumulatorConfig) -> dict[int, np.ndarray]:
    """``{category index: [num_documents, fields]}`` for the categories the table holds."""
    n = cfg.num_documents
    if not isinstance(d, dict):
        raise StateInvalid(f"state '{TABLE_KEY}' must be an object, got {type(d).__name__}")
    if list(d.get("fields", [])) != list(SCALAR_FIELDS):
        raise StateInvalid(f"state '{TABLE_KEY}' has fields {d.get('fields')!r}, expected {list(SCALAR_FIELDS)}")
    if d.get("num_documents") != n:
        raise StateInvalid(f"state '{TABLE_KEY}' has num_documents {d.get('num_documents')!r}, expected {n}")
    by_cat = d.get("by_category")
    if not isinstance(by_cat, dict):
        raise StateInvalid(f"state '{TABLE_KEY}.by_category' must be an object")
    unknown = sorted(set(by_cat) - set(cfg.category_names))
    if unknown:
        raise StateInvalid(f"state '{TABLE_KEY}' has unknown categories {unknown}; known: {list(cfg.category_names)}")
    out = {}
    for name, cols in by_cat.items():
        if not isinstance(cols, dict) or set(cols) != set(SCALAR_FIELDS):
            raise StateInvalid(f"state '{TABLE_KEY}.by_category.{name}' must have exactly the fields "
                               f"{list(SCALAR_FIELDS)}")
        where = f"{TABLE_KEY}.by_category.{name}"
        for f in SCALAR_FIELDS:  # every length checked before the first allocation
            if not isinstance(cols[f], list) or len(cols[f]) != n:
                _column(cols[f], n, f"{where}.{f}")
        rows = np.empty((n, len(SCALAR_FIELDS)), dtype=np.float64)
        for j, f in enumerate(SCALAR_FIELDS):
            rows[:, j] = _column(cols[f], n, f"{where}.{f}")
        out[cfg.category_names.index(name)] = rows
    return out


def _check_table(cfg: AccumulatorConfig, scalars: np.ndarray, table: dict[int, np.ndarray]) -> None:
    for c in range(cfg.num_categories):
        rows = table.get(c)
        total = rows.sum(0) if rows is not None else np.zeros(len(SCALAR_FIELDS))
        if rows is not None:
            if not np.isfinite(rows).all() or (rows < 0).any():
                raise StateInvalid("state trajectories hold non-finite or negative sums")
            counts = rows[:, _COUNT_COLS]
            if (counts != np.floor(counts)).any():
                bad = SCALAR_COUNTS[int(np.flatnonzero((counts != np.floor(counts)).any(0))[0])]
                raise StateInvalid(f"state trajectories.{bad} holds fractional counts")
            f = {n: rows[:, i] for n, i in _F.items()}
            if not ((f["num_top1"] <= f["num_in_topk"]).all() and (f["num_in_topk"] <= f["num_tokens"]).all()
                    and (f["num_high_entropy"] <= f["num_in_topk"]).all()):
                raise StateInvalid("state trajectories: a row breaks num_top1 <= num_in_topk <= num_tokens "
                                   "or num_high_entropy <= num_in_topk")
        for name, i in _F.items():
            a, b = total[i], scalars[c, i]
            ok = (a == b) if name in SCALAR_COUNTS else (abs(a - b) <= _REL * max(abs(b), 1.0))
            if not ok:
                raise StateInvalid(f"state trajectories.{name} does not add up to scalars.{name} "
                                   f"(category {cfg.category_names[c]!r})")


class RecordState:
    """A validated state: config, ``scalars [C, F]``, ``hist [C, bins, BF]`` and the
    per-trajectory rows of the categories that have tokens."""

    def __init__(self, config: AccumulatorConfig, scalars: np.ndarray, hist: np.ndarray, reduced: bool,
                 table: dict[int, np.ndarray] | None):
        self.config, self.scalars, self.hist, self.reduced = config, scalars, hist, reduced
        self.table = table
        self._edges = _edges_of(config)

    def _index(self, category):
        names = self.config.category_names
        if category is None or category == "all":
            return None
        if isinstance(category, str):
            if category not in names:
                raise KeyError(f"unknown category {category!r}; known: {names}")
            return names.index(category)
        if not 1 <= category <= len(names):
            raise KeyError(f"category id {category} outside 1..{len(names)}")
        return category - 1

    def _select(self, table: np.ndarray, category) -> np.ndarray:
        c = self._index(category)
        return table.sum(axis=0) if c is None else table[c]

    def sums(self, category=None) -> dict:
        row = self._select(self.scalars, category)
        return {name: float(row[i]) for name, i in _F.items()}

    def histogram(self, category=None) -> dict:
        hist = self._select(self.hist, category)
        out = {"edges": self._edges.tolist()}
        out.update({name: hist[:, i].tolist() for name, i in _B.items()})
        return out

    def sweep(self, thresholds, category=None) -> list[dict]:
        return sweep_histogram(self._select(self.hist, category), self._edges, self.sums(category), self.config,
                               thresholds)

    def trajectory_rows(self, category=None) -> np.ndarray | None:
        """``[num_documents, fields]`` of one category (or summed over all); ``None`` when
        trajectories are not tracked or the category has no scored trajectory."""
        if self.table is None:
            return None
        c = self._index(category)
        if c is not None:
            return self.table.get(c)
        blocks = [self.table[i] for i in sorted(self.table)]
        if not blocks:
            return None
        total = blocks[0].copy()
        for b in blocks[1:]:
            total += b
        return total

    def uncertainty(self, category=None) -> dict:
        if self.table is None:
            return {"num_documents": None}
        rows = self.trajectory_rows(category)
        if rows is None:
            rows = np.zeros((0, len(SCALAR_FIELDS)))
        rows = rows[(rows[:, _F["num_tokens"]] + rows[:, _F["num_invalid"]]) > 0]
        return {"num_documents": int(rows.shape[0]), **stderr_metrics(rows, SCALAR_FIELDS)}

    def hesnr(self) -> float:
        return metrics_from_sums(self.sums())["hesnr"]

    def to_accumulator(self):
        """The same state as a :class:`~megatron_hesnr.HESNRAccumulator` (imports torch)."""
        import torch

        from ..metric.accumulator import HESNRAccumulator

        acc = HESNRAccumulator(self.config)
        acc.scalars.copy_(torch.from_numpy(self.scalars))
        acc.hist.copy_(torch.from_numpy(self.hist))
        for c, rows in (self.table or {}).items():
            acc.trajectories[:, c, :] = torch.from_numpy(rows)
        acc._reduced = self.reduced
        return acc


def parse_state(d) -> RecordState:
    """Validate a saved ``HESNRAccumulator.state_dict()``; raise :class:`StateInvalid`."""
    tracked = isinstance(d, dict) and isinstance(d.get("config"), dict) and d["config"].get("num_documents") is not None
    _keys(d, STATE_KEYS + ((TABLE_KEY,) if tracked else ()), "accumulator state")
    if not _is_int(d["version"]) or d["version"] != STATE_VERSION:
        raise StateInvalid(f"accumulator state version {d['version']!r} != {STATE_VERSION}")
    for name, expected in (("scalar_fields", SCALAR_FIELDS), ("bin_fields", BIN_FIELDS)):
        if not isinstance(d[name], list) or d[name] != list(expected):
            raise StateInvalid(f"accumulator state {name} {d[name]!r} != {list(expected)} (a different layout)")
    if not isinstance(d["reduced"], bool):
        raise StateInvalid(f"accumulator state reduced must be true or false, got {d['reduced']!r}")
    cfg = _config(d["config"])
    scalars = _nested(d["scalars"], (cfg.num_categories, len(SCALAR_FIELDS)), "scalars")
    hist = _nested(d["hist"], (cfg.num_categories, cfg.num_bins, len(BIN_FIELDS)), "hist")
    _check_sums(cfg, scalars, hist)
    table = None
    if cfg.num_documents is not None:
        table = _table(d[TABLE_KEY], cfg)
        _check_table(cfg, scalars, table)
    return RecordState(cfg, scalars, hist, d["reduced"], table)
