"""Validating accumulator states: the one place that decides what a state may hold.

Used by :meth:`HESNRAccumulator.load_state_dict` (a saved state, e.g. a record
read by ``hesnr report``), :meth:`HESNRAccumulator.merge` (two live states) and
:meth:`HESNRAccumulator.all_reduce` (the per-rank fingerprint compared before
the sum).  A state that passes loads and saves back exactly as it was; anything
else raises :class:`StateError` naming the field.

What a state must satisfy beyond its layout (counts are exact integers in
float64, so the count relations are checked exactly):

* every value finite and >= 0; count fields integral;
* ``num_top1 <= num_in_topk <= num_tokens`` and ``num_high_entropy <= num_in_topk``
  (the target is in the top k whenever it is the top 1 or in HE);
* per category, the histogram ``count`` sums to ``num_tokens`` and
  ``count_in_topk`` to ``num_in_topk``, with ``count_in_topk <= count`` per bin;
* ``sum_entropy <= num_tokens * ln k`` and ``sum_p_over_h``, ``sum_q_over_h``
  ``<= num_high_entropy / threshold`` (p, q <= 1 and H_k > threshold on HE),
  up to a relative 1e-6 for rounding;
* with per-trajectory sums (``config.num_documents`` set, key ``trajectories``):
  each trajectory's row obeys the same rules, and the rows add up to the scalars
  (counts exactly, sums to a relative 1e-6).
"""
from __future__ import annotations

import hashlib
import math
import struct

import torch

from . import trajectory_sums as traj
from .accumulator import BIN_FIELDS, SCALAR_FIELDS, STATE_VERSION, AccumulatorConfig

STATE_KEYS = ("version", "config", "scalar_fields", "bin_fields", "scalars", "hist", "reduced")
CONFIG_KEYS = ("k", "threshold", "num_bins", "category_names")
# Written only when per-trajectory sums are kept (records of earlier versions lack it).
OPTIONAL_CONFIG_KEYS = ("num_documents",)
SCALAR_COUNTS = ("num_tokens", "num_invalid", "num_top1", "num_in_topk", "num_high_entropy")
BIN_COUNTS = ("count", "count_in_topk")
_REL = 1e-6


class StateError(ValueError):
    """An accumulator state that cannot be used; the message names the field."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _keys(d, expected: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    if not isinstance(d, dict):
        raise StateError(f"{where} must be an object, got {type(d).__name__}")
    missing = [k for k in expected if k not in d]
    extra = sorted(str(k) for k in d if k not in expected and k not in optional)
    if missing or extra:
        raise StateError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])))


def config_from_dict(cfg) -> AccumulatorConfig:
    """The :class:`AccumulatorConfig` of a state's ``config``; strict JSON types."""
    _keys(cfg, CONFIG_KEYS, "state config", OPTIONAL_CONFIG_KEYS)
    for name in ("k", "num_bins"):
        if not _is_int(cfg[name]):
            raise StateError(f"state config.{name} must be an integer, got {cfg[name]!r}")
    num_documents = cfg.get("num_documents")
    if "num_documents" in cfg and not _is_int(num_documents):
        # Written only by states that keep per-trajectory sums (absent otherwise).
        raise StateError(f"state config.num_documents must be an integer, got {num_documents!r}")
    if not _is_number(cfg["threshold"]) or not math.isfinite(cfg["threshold"]):
        raise StateError(f"state config.threshold must be a finite number, got {cfg['threshold']!r}")
    names = cfg["category_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise StateError(f"state config.category_names must be a list of non-empty strings, got {names!r}")
    try:
        return AccumulatorConfig(k=cfg["k"], threshold=cfg["threshold"], num_bins=cfg["num_bins"],
                                 category_names=tuple(names), num_documents=num_documents)
    except (TypeError, ValueError) as exc:
        raise StateError(f"state config: {exc}") from None


def _table(value, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Nested lists of numbers of exactly ``shape`` -> float64 tensor."""
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

    walk(value, 0, "")
    return torch.tensor(value, dtype=torch.float64).reshape(shape)


def check_sums(config: AccumulatorConfig, scalars: torch.Tensor, hist: torch.Tensor, where: str = "state") -> None:
    """Raise :class:`StateError` unless the sums satisfy the rules in the module docstring."""
    scalars, hist = scalars.detach().cpu(), hist.detach().cpu()
    for name, t in (("scalars", scalars), ("hist", hist)):
        if not bool(t.isfinite().all()):
            raise StateError(f"{where} {name} holds non-finite values")
        if bool((t < 0).any()):
            raise StateError(f"{where} {name} holds negative sums or counts")
    f = {n: scalars[:, i] for i, n in enumerate(SCALAR_FIELDS)}
    b = {n: hist[:, :, i] for i, n in enumerate(BIN_FIELDS)}
    for name in SCALAR_COUNTS:
        if not bool((f[name] == f[name].floor()).all()):
            raise StateError(f"{where} scalars.{name} holds fractional counts")
    for name in BIN_COUNTS:
        if not bool((b[name] == b[name].floor()).all()):
            raise StateError(f"{where} hist.{name} holds fractional counts")

    def rule(ok: torch.Tensor, text: str):
        bad = (~ok).nonzero().flatten().tolist()
        if bad:
            cat = config.category_names[bad[0]]
            raise StateError(f"{where}: {text} (category {cat!r})")

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


def validate_state_dict(d) -> tuple[AccumulatorConfig, torch.Tensor, torch.Tensor, bool, torch.Tensor | None]:
    """Check a saved state completely; -> (config, scalars, hist, reduced, trajectories).

    ``trajectories`` is the per-trajectory table ``[num_documents, categories, fields]``,
    or ``None`` when the state keeps none.
    """
    if isinstance(d, dict) and "config" in d and not isinstance(d["config"], dict):
        raise StateError(f"accumulator state config must be an object, got {type(d['config']).__name__}")
    if isinstance(d, dict) and isinstance(d.get("config"), dict) and d["config"].get("num_documents") is not None:
        _keys(d, STATE_KEYS + (traj.TABLE_KEY,), "accumulator state")
    else:
        _keys(d, STATE_KEYS, "accumulator state")
    if not _is_int(d["version"]) or d["version"] != STATE_VERSION:
        raise StateError(f"accumulator state version {d['version']!r} != {STATE_VERSION}")
    for name, expected in (("scalar_fields", SCALAR_FIELDS), ("bin_fields", BIN_FIELDS)):
        if not isinstance(d[name], list) or d[name] != list(expected):
            raise StateError(f"accumulator state {name} {d[name]!r} != {list(expected)} (a different layout)")
    if not isinstance(d["reduced"], bool):
        raise StateError(f"accumulator state reduced must be true or false, got {d['reduced']!r}")
    cfg = config_from_dict(d["config"])
    scalars = _table(d["scalars"], (cfg.num_categories, len(SCALAR_FIELDS)), "scalars")
    hist = _table(d["hist"], (cfg.num_categories, cfg.num_bins, len(BIN_FIELDS)), "hist")
    check_sums(cfg, scalars, hist)
    table = None
    if cfg.num_documents is not None:
        try:   # before allocating: the count must be backed by the lists the state holds
            traj.check_table_json_size(d[traj.TABLE_KEY], cfg.num_documents)
        except ValueError as exc:
            raise StateError(str(exc)) from None
        table = torch.zeros(cfg.num_documents, cfg.num_categories, len(SCALAR_FIELDS), dtype=torch.float64)
        try:
            traj.table_from_json(d[traj.TABLE_KEY], table, SCALAR_FIELDS, cfg.category_names)
        except ValueError as exc:
            raise StateError(str(exc)) from None
        check_trajectory_sums(cfg, scalars, table)
    return cfg, scalars, hist, d["reduced"], table


def check_trajectory_sums(config: AccumulatorConfig, scalars: torch.Tensor, table: torch.Tensor,
                          where: str = "state") -> None:
    """Per-trajectory rows obey the scalar rules and add up to ``scalars``."""
    table, scalars = table.detach().cpu(), scalars.detach().cpu()
    if not bool(table.isfinite().all()) or bool((table < 0).any()):
        raise StateError(f"{where} trajectories hold non-finite or negative sums")
    f = {n: table[..., i] for i, n in enumerate(SCALAR_FIELDS)}
    for name in SCALAR_COUNTS:
        if not bool((f[name] == f[name].floor()).all()):
            raise StateError(f"{where} trajectories.{name} holds fractional counts")
    if not (bool((f["num_top1"] <= f["num_in_topk"]).all()) and bool((f["num_in_topk"] <= f["num_tokens"]).all())
            and bool((f["num_high_entropy"] <= f["num_in_topk"]).all())):
        raise StateError(f"{where} trajectories: a row breaks num_top1 <= num_in_topk <= num_tokens "
                         "or num_high_entropy <= num_in_topk")
    total = table.sum(0)
    for i, name in enumerate(SCALAR_FIELDS):
        a, b = total[:, i], scalars[:, i]
        ok = (a == b) if name in SCALAR_COUNTS else ((a - b).abs() <= _REL * b.abs().clamp_min(1.0))
        if not bool(ok.all()):
            cat = config.category_names[int((~ok).nonzero()[0])]
            raise StateError(f"{where} trajectories.{name} does not add up to scalars.{name} (category {cat!r})")


def check_mergeable(a, b) -> None:
    """``b`` may be added into ``a`` (two :class:`HESNRAccumulator`)."""
    if a.config != b.config:
        raise StateError(f"cannot merge accumulators with different configs: {a.config} vs {b.config}")
    if a._reduced != b._reduced:
        raise StateError(
            "cannot merge a reduced accumulator (already summed over ranks) with an unreduced one: "
            "a later all_reduce() would count the reduced one's tokens once per rank"
        )
    check_sums(b.config, b.scalars, b.hist, "merged-in state")
    if b.trajectories is not None:
        check_trajectory_sums(b.config, b.scalars, b.trajectories, "merged-in state")


# ------------------------------------------------------- rank fingerprints
FINGERPRINT_FIELDS = ("state_version", "k", "threshold", "num_bins", "category_names", "state_size", "reduced")


def _float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _names_hash(names) -> int:
    digest = hashlib.sha256("\0".join(names).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def fingerprint(acc) -> list[int]:
    """What every rank of an accumulator all-reduce must agree on, as int64 values."""
    c = acc.config
    return [STATE_VERSION, c.k, _float_bits(c.threshold), c.num_bins, _names_hash(c.category_names),
            acc.state.numel(), int(acc._reduced)]


def show_fingerprint(row: list[int]) -> dict:
    out = dict(zip(FINGERPRINT_FIELDS, row))
    out["threshold"] = struct.unpack("<d", struct.pack("<q", row[2]))[0]
    out["category_names"] = f"hash {row[4] & (2**64 - 1):016x}"
    out["reduced"] = bool(row[6])
    return out
