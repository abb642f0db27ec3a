"""The accumulator's saved state: its layout, its settings and the rules it obeys, without torch.

One definition for every reader and writer of a state: the accumulator
(:mod:`.accumulator`, torch; :mod:`.state_check` turns its tensors into the arrays
checked here) and the record reader of ``hesnr report`` / ``hesnr compare``
(:mod:`megatron_hesnr.analysis.record_state`, numpy only).

Layout: the keys of a state (``STATE_KEYS``, the per-trajectory ``TABLE_KEY``), of its
config (``CONFIG_KEYS``), the field names (``SCALAR_FIELDS``, ``BIN_FIELDS``), the
version, :class:`AccumulatorConfig` and the table shapes ``scalars [categories, fields]``,
``hist [categories, bins, bin fields]`` and, per category with tokens,
``trajectories [num_documents, fields]``.

Rules a state must satisfy beyond its layout (counts are exact integers in float64,
so the count relations are checked exactly):

* every value finite and >= 0; count fields integral;
* ``num_top1 <= num_in_topk <= num_tokens`` and ``num_high_entropy <= num_in_topk``
  (the target is in the top k whenever it is the top 1 or in HE);
* per category, the histogram ``count`` sums to ``num_tokens`` and
  ``count_in_topk`` to ``num_in_topk``, with ``count_in_topk <= count`` per bin;
* ``sum_entropy <= num_tokens * ln k`` and ``sum_p_over_h``, ``sum_q_over_h``
  ``<= num_high_entropy / threshold`` (p, q <= 1 and H_k > threshold on HE),
  up to a relative 1e-6 for rounding;
* with per-trajectory sums (``config.num_documents`` set, key ``trajectories``):
  every list has ``num_documents`` entries (checked before anything is allocated),
  each trajectory's row obeys the same rules, and the rows add up to the scalars
  (counts exactly, sums to a relative 1e-6).

:func:`parse_state` applies all of them to a JSON state and gives float64 arrays;
anything else raises :class:`StateError` naming the field.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .defaults import DEFAULT_CATEGORY_NAMES, DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD


def check_num_documents(num_documents) -> None:
    if num_documents is None:
        return
    if isinstance(num_documents, bool) or int(num_documents) != num_documents or num_documents < 1:
        raise ValueError(f"num_documents must be a positive integer (the trajectories of the set) or None, "
                         f"got {num_documents!r}")


STATE_VERSION = 1

# Scalar fields per category (columns of the state, before the histogram).
SCALAR_FIELDS = (
    "num_tokens",        # scored and valid (|M|)
    "num_invalid",       # scored but invalid (non-finite logits, unscorable label)
    "sum_nll",           # over M
    "sum_entropy",       # H_k over M
    "num_top1",          # over M
    "num_in_topk",       # over M
    "num_high_entropy",  # |HE| at the configured threshold
    "sum_p_over_h",      # over HE: p(y) / H_k
    "sum_q_over_h",      # over HE: q_y / H_k (renormalised top-k probability)
    "sum_nll_he",        # over HE
)
# Per-bin fields of the H_k histogram.
BIN_FIELDS = (
    "count",         # every token of M
    "count_in_topk",  # tokens of M whose target is in the top k
    "sum_p_over_h",  # in_topk tokens (0 where H_k == 0)
    "sum_q_over_h",  # in_topk tokens (0 where H_k == 0)
    "sum_nll",       # in_topk tokens
)
#: Column of each field in ``scalars`` / the per-trajectory rows, and in ``hist``.
SCALAR_INDEX = {name: i for i, name in enumerate(SCALAR_FIELDS)}
BIN_INDEX = {name: i for i, name in enumerate(BIN_FIELDS)}
_F, _B = SCALAR_INDEX, BIN_INDEX


class AccumulatorConfigError(ValueError):
    """A wrong metric setting: ``field`` (``k``, ``threshold``, ...) and ``message``."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field} {message}")


@dataclass(kw_only=True)
class AccumulatorConfig:
    """What an accumulator measures; two states merge only under equal configs."""

    k: int = DEFAULT_K
    """Size of the top-k candidate set (must match ``token_stats(k=...)``)."""
    threshold: float = DEFAULT_THRESHOLD
    """High-entropy threshold: a token is in HE when H_k > threshold (strict)."""
    num_bins: int = DEFAULT_NUM_BINS
    """Equal-width histogram bins of H_k over [0, ln k]."""
    category_names: tuple[str, ...] = field(default=DEFAULT_CATEGORY_NAMES)
    """Names of mask categories 1, 2, ...; their number fixes the state's rows."""
    num_documents: int | None = None
    """Trajectories of the evaluation set, when per-trajectory sums are kept (for the
    standard errors and ``hesnr compare``); ``update`` then needs ``doc_ids``."""

    def __post_init__(self):
        self.category_names = tuple(self.category_names)
        check_num_documents(self.num_documents)
        if int(self.k) != self.k or self.k < 2:
            raise AccumulatorConfigError("k", f"must be an integer >= 2 (the entropy of 1 value is 0), got {self.k}")
        if not (0.0 < self.threshold < math.log(self.k)):
            raise AccumulatorConfigError(
                "threshold", f"must lie in (0, ln k = {math.log(self.k):.6f}) for k={self.k}, got {self.threshold}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 1:
            raise AccumulatorConfigError("num_bins", f"must be a positive integer, got {self.num_bins}")
        if (not self.category_names or len(set(self.category_names)) != len(self.category_names)
                or "all" in self.category_names):
            raise AccumulatorConfigError(
                "category_names", f"must be distinct names other than 'all' (the overall result), "
                                  f"got {list(self.category_names)}")

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    def bin_edges(self, device=None):
        """The ``num_bins + 1`` edges as a float64 ``torch.Tensor``."""
        import torch

        w = math.log(self.k) / self.num_bins
        return torch.arange(self.num_bins + 1, dtype=torch.float64, device=device) * w

    def bin_edges_np(self) -> np.ndarray:
        """The same edges as a float64 numpy array (bit-identical to :meth:`bin_edges`)."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * (math.log(self.k) / self.num_bins)



# ------------------------------------------------------------ the saved state
STATE_KEYS = ("version", "config", "scalar_fields", "bin_fields", "scalars", "hist", "reduced")
CONFIG_KEYS = ("k", "threshold", "num_bins", "category_names")
#: Written only when per-trajectory sums are kept (states of earlier versions lack it).
OPTIONAL_CONFIG_KEYS = ("num_documents",)
#: The per-trajectory table's key, present exactly when ``config.num_documents`` is set.
TABLE_KEY = "trajectories"
SCALAR_COUNTS = ("num_tokens", "num_invalid", "num_top1", "num_in_topk", "num_high_entropy")
BIN_COUNTS = ("count", "count_in_topk")
#: No histogram this project writes has more bins (a larger claim allocates nothing).
MAX_NUM_BINS = 1 << 20
#: A table whose JSON lists no category (all zero: no token was scored) is not backed by
#: any list; its ``num_documents`` is only believed up to this many trajectories.
MAX_EMPTY_TABLE_DOCUMENTS = 1 << 20
_REL = 1e-6
_COUNT_COLS = [_F[n] for n in SCALAR_COUNTS]


class StateError(ValueError):
    """An accumulator state that cannot be used; the message names the field."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_keys(d, expected: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    """``d`` is an object with exactly the keys ``expected`` (and maybe ``optional``)."""
    if not isinstance(d, dict):
        raise StateError(f"{where} must be an object, got {type(d).__name__}")
    missing = [k for k in expected if k not in d]
    extra = sorted(str(k) for k in d if k not in expected and k not in optional)
    if missing or extra:
        raise StateError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])))


#: Configs shared by the states that have them (a report of a million records holds one
#: per distinct config, not one per record); AccumulatorConfig is treated as read-only.
_CONFIGS: dict[tuple, AccumulatorConfig] = {}


def config_from_dict(cfg) -> AccumulatorConfig:
    """The :class:`AccumulatorConfig` of a state's ``config``; strict JSON types."""
    check_keys(cfg, CONFIG_KEYS, "state config", OPTIONAL_CONFIG_KEYS)
    for name in ("k", "num_bins"):
        if not _is_int(cfg[name]):
            raise StateError(f"state config.{name} must be an integer, got {cfg[name]!r}")
    if "num_documents" in cfg and not _is_int(cfg["num_documents"]):
        raise StateError(f"state config.num_documents must be an integer, got {cfg['num_documents']!r}")
    if not _is_number(cfg["threshold"]) or not math.isfinite(cfg["threshold"]):
        raise StateError(f"state config.threshold must be a finite number, got {cfg['threshold']!r}")
    names = cfg["category_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise StateError(f"state config.category_names must be a list of non-empty strings, got {names!r}")
    if cfg["num_bins"] > MAX_NUM_BINS:
        raise StateError(f"state config.num_bins {cfg['num_bins']} is not a histogram this project writes "
                         f"(at most {MAX_NUM_BINS})")
    key = (cfg["k"], cfg["threshold"], cfg["num_bins"], tuple(names), cfg.get("num_documents"))
    shared = _CONFIGS.get(key)
    if shared is not None:
        return shared
    try:
        made = AccumulatorConfig(k=cfg["k"], threshold=cfg["threshold"], num_bins=cfg["num_bins"],
                                 category_names=tuple(names), num_documents=cfg.get("num_documents"))
    except (TypeError, ValueError) as exc:
        raise StateError(f"state config: {exc}") from None
    if len(_CONFIGS) < 4096:
        _CONFIGS[key] = made
    return made


def nested_table(value, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Nested lists of numbers (no booleans) of exactly ``shape`` -> float64 array."""
    def walk(v, depth: int, path: str):
        if depth == len(shape):
            if not _is_number(v):
                raise StateError(f"state {name}{path} must be a number, got {v!r}")
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            got = f"a list of {len(v)}" if isinstance(v, list) else type(v).__name__
            raise StateError(f"state {name}{path} must be a list of {shape[depth]}, got {got} "
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
        raise StateError(f"state {name} holds a number beyond float64") from None


def check_sums(config: AccumulatorConfig, scalars: np.ndarray, hist: np.ndarray, where: str = "state") -> None:
    """Raise :class:`StateError` unless ``scalars [C, F]`` and ``hist [C, bins, BF]`` obey the rules."""
    for name, t in (("scalars", scalars), ("hist", hist)):
        if not np.isfinite(t).all():
            raise StateError(f"{where} {name} holds non-finite values")
        if (t < 0).any():
            raise StateError(f"{where} {name} holds negative sums or counts")
    f = {n: scalars[:, i] for n, i in _F.items()}
    b = {n: hist[:, :, i] for n, i in _B.items()}
    for name in SCALAR_COUNTS:
        if (f[name] != np.floor(f[name])).any():
            raise StateError(f"{where} scalars.{name} holds fractional counts")
    for name in BIN_COUNTS:
        if (b[name] != np.floor(b[name])).any():
            raise StateError(f"{where} hist.{name} holds fractional counts")

    def rule(ok: np.ndarray, text: str):
        bad = np.flatnonzero(~ok)
        if len(bad):
            raise StateError(f"{where}: {text} (category {config.category_names[int(bad[0])]!r})")

    rule(f["num_top1"] <= f["num_in_topk"], "num_top1 > num_in_topk")
    rule(f["num_in_topk"] <= f["num_tokens"], "num_in_topk > num_tokens")
    rule(f["num_high_entropy"] <= f["num_in_topk"], "num_high_entropy > num_in_topk")
    rule(b["count"].sum(1) == f["num_tokens"], "histogram count does not sum to num_tokens")
    rule(b["count_in_topk"].sum(1) == f["num_in_topk"], "histogram count_in_topk does not sum to num_in_topk")
    rule((b["count_in_topk"] <= b["count"]).all(1), "a histogram bin has count_in_topk > count")
    bound = f["num_tokens"] * math.log(config.k)
    rule(f["sum_entropy"] <= bound * (1 + _REL) + _REL, "sum_entropy > num_tokens * ln k")
    bound = f["num_high_entropy"] / config.threshold
    for name in ("sum_p_over_h", "sum_q_over_h"):
        rule(f[name] <= bound * (1 + _REL) + _REL, f"{name} > num_high_entropy / threshold")


def _column(values, n: int, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise StateError(f"state '{where}' is not a list of numbers")
    if len(values) != n:
        raise StateError(f"state '{where}' has shape ({len(values)},), expected ({n},) = config.num_documents")
    try:
        col = np.array(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StateError(f"state '{where}' is not a list of numbers ({exc})") from None
    if col.ndim != 1 or col.dtype.kind not in "biuf":
        raise StateError(f"state '{where}' is not a list of numbers")
    return col


def trajectory_table(d, config: AccumulatorConfig) -> dict[int, np.ndarray]:
    """``{category index: [num_documents, fields]}`` of a state's per-trajectory table, for the
    categories it holds (the others are all zero).  Every list's length is checked against
    ``config.num_documents`` before the first array is built: a claimed count allocates nothing."""
    n = config.num_documents
    if not isinstance(d, dict):
        raise StateError(f"state '{TABLE_KEY}' must be an object, got {type(d).__name__}")
    if d.get("fields") != list(SCALAR_FIELDS):
        raise StateError(f"state '{TABLE_KEY}' has fields {d.get('fields')!r}, expected {list(SCALAR_FIELDS)}")
    if d.get("num_documents") != n:
        raise StateError(f"state '{TABLE_KEY}' has num_documents {d.get('num_documents')!r}, "
                         f"but config.num_documents is {n}")
    by_cat = d.get("by_category")
    if not isinstance(by_cat, dict):
        raise StateError(f"state '{TABLE_KEY}.by_category' must be an object")
    unknown = sorted(str(c) for c in set(by_cat) - set(config.category_names))
    if unknown:
        raise StateError(f"state '{TABLE_KEY}' has unknown categories {unknown}; known: {list(config.category_names)}")
    for name, cols in by_cat.items():
        if not isinstance(cols, dict) or set(cols) != set(SCALAR_FIELDS):
            raise StateError(f"state '{TABLE_KEY}.by_category.{name}' must have exactly the fields "
                             f"{list(SCALAR_FIELDS)}")
        for f in SCALAR_FIELDS:
            if not isinstance(cols[f], list) or len(cols[f]) != n:
                _column(cols[f], n, f"{TABLE_KEY}.by_category.{name}.{f}")
    if not by_cat and n > MAX_EMPTY_TABLE_DOCUMENTS:
        raise StateError(f"state config.num_documents = {n} with an empty '{TABLE_KEY}' table: more than "
                         f"{MAX_EMPTY_TABLE_DOCUMENTS} trajectories without a single scored token is not believed")
    out = {}
    for name, cols in by_cat.items():
        rows = np.empty((n, len(SCALAR_FIELDS)), dtype=np.float64)
        for j, f in enumerate(SCALAR_FIELDS):
            rows[:, j] = _column(cols[f], n, f"{TABLE_KEY}.by_category.{name}.{f}")
        out[config.category_names.index(name)] = rows
    return out


def check_trajectory_sums(config: AccumulatorConfig, scalars: np.ndarray, table: dict[int, np.ndarray],
                          where: str = "state") -> None:
    """Each trajectory's row obeys the scalar rules, and the rows add up to ``scalars``."""
    for c in range(config.num_categories):
        rows = table.get(c)
        total = rows.sum(0) if rows is not None else np.zeros(len(SCALAR_FIELDS))
        if rows is not None:
            if not np.isfinite(rows).all() or (rows < 0).any():
                raise StateError(f"{where} trajectories hold non-finite or negative sums")
            counts = rows[:, _COUNT_COLS]
            fractional = (counts != np.floor(counts)).any(0)
            if fractional.any():
                raise StateError(f"{where} trajectories.{SCALAR_COUNTS[int(np.flatnonzero(fractional)[0])]} "
                                 "holds fractional counts")
            f = {n: rows[:, i] for n, i in _F.items()}
            if not ((f["num_top1"] <= f["num_in_topk"]).all() and (f["num_in_topk"] <= f["num_tokens"]).all()
                    and (f["num_high_entropy"] <= f["num_in_topk"]).all()):
                raise StateError(f"{where} trajectories: a row breaks num_top1 <= num_in_topk <= num_tokens "
                                 "or num_high_entropy <= num_in_topk")
        for name, i in _F.items():
            a, b = total[i], scalars[c, i]
            ok = (a == b) if name in SCALAR_COUNTS else (abs(a - b) <= _REL * max(abs(b), 1.0))
            if not ok:
                raise StateError(f"{where} trajectories.{name} does not add up to scalars.{name} "
                                 f"(category {config.category_names[c]!r})")


def parse_state(d) -> tuple[AccumulatorConfig, np.ndarray, np.ndarray, bool, dict[int, np.ndarray] | None]:
    """Check a saved state completely; -> (config, scalars, hist, reduced, trajectory table or None)."""
    if isinstance(d, dict) and "config" in d and not isinstance(d["config"], dict):
        raise StateError(f"accumulator state config must be an object, got {type(d['config']).__name__}")
    tracked = isinstance(d, dict) and isinstance(d.get("config"), dict) and d["config"].get("num_documents") is not None
    check_keys(d, STATE_KEYS + ((TABLE_KEY,) if tracked else ()), "accumulator state")
    if not _is_int(d["version"]) or d["version"] != STATE_VERSION:
        raise StateError(f"accumulator state version {d['version']!r} != {STATE_VERSION}")
    for name, expected in (("scalar_fields", SCALAR_FIELDS), ("bin_fields", BIN_FIELDS)):
        if not isinstance(d[name], list) or d[name] != list(expected):
            raise StateError(f"accumulator state {name} {d[name]!r} != {list(expected)} (a different layout)")
    if not isinstance(d["reduced"], bool):
        raise StateError(f"accumulator state reduced must be true or false, got {d['reduced']!r}")
    cfg = config_from_dict(d["config"])
    scalars = nested_table(d["scalars"], (cfg.num_categories, len(SCALAR_FIELDS)), "scalars")
    hist = nested_table(d["hist"], (cfg.num_categories, cfg.num_bins, len(BIN_FIELDS)), "hist")
    check_sums(cfg, scalars, hist)
    table = None
    if cfg.num_documents is not None:
        table = trajectory_table(d[TABLE_KEY], cfg)
        check_trajectory_sums(cfg, scalars, table)
    return cfg, scalars, hist, d["reduced"], table
