"""Accumulating HE-SNR over many batches, ranks and checkpoints.

Everything is kept as float64 sums and counts in one flat buffer, viewed as
``scalars [num_categories, len(SCALAR_FIELDS)]`` followed by
``hist [num_categories, num_bins, len(BIN_FIELDS)]``, so that a single all-reduce
reduces all of it and ratios are formed only in :meth:`HESNRAccumulator.compute`.

Row ``c - 1`` holds category ``c`` of the scoring mask (0 = not scored); the
overall result is the sum over categories.

Histogram layout: ``num_bins`` equal bins over ``[0, ln k]`` with edges
``e_i = i * ln(k) / num_bins``.  Bin 0 is ``[0, e_1]`` and bin ``i >= 1`` is the
right-closed interval ``(e_i, e_{i+1}]``; values above ``ln k`` (rounding) land in
the last bin.  Right-closed bins make ``H > e_j`` equal to "bin >= j", so
:meth:`HESNRAccumulator.sweep` is exact at every edge ``e_j``, ``j >= 1``.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch

from . import trajectory_sums as traj
from .ratios import metrics_from_sums, sweep_histogram
from .state_check import (FINGERPRINT_FIELDS, StateError, check_mergeable, fingerprint, show_fingerprint,
                          validate_state_dict)
from .state_layout import (  # noqa: F401 - re-exported: the layout and config live in the torch-free module
    BIN_FIELDS,
    SCALAR_FIELDS,
    STATE_VERSION,
    TABLE_KEY,
    AccumulatorConfig,
    AccumulatorConfigError,
)
from .state_layout import BIN_INDEX as _B
from .state_layout import SCALAR_INDEX as _F
from .stderr import stderr_metrics
from .token_stats import TokenStats


class HESNRAccumulator:
    """Sums and counts of the HE-SNR metric, overall and per mask category.

    Typical use: ``acc.update(token_stats(logits, labels), mask)`` per batch, one
    ``acc.all_reduce(dp_cp_group)`` at the end, then ``acc.compute()``.
    """

    def __init__(self, config: AccumulatorConfig | None = None, *, device=None, **kwargs):
        if config is not None and kwargs:
            raise TypeError("pass either config or keyword fields, not both")
        self.config = config if config is not None else AccumulatorConfig(**kwargs)
        c = self.config
        n_scalar = c.num_categories * len(SCALAR_FIELDS)
        n_hist = c.num_categories * c.num_bins * len(BIN_FIELDS)
        n_traj = traj.table_size(c.num_documents, c.num_categories, len(SCALAR_FIELDS))
        self.state = torch.zeros(n_scalar + n_hist + n_traj, dtype=torch.float64, device=device)
        self.scalars = self.state[:n_scalar].view(c.num_categories, len(SCALAR_FIELDS))
        self.hist = self.state[n_scalar:n_scalar + n_hist].view(c.num_categories, c.num_bins, len(BIN_FIELDS))
        # Per-trajectory sums [num_documents, num_categories, fields], in the same flat
        # buffer: the one all-reduce and merge() sum them with the rest.
        self.trajectories = None if n_traj == 0 else self.state[n_scalar + n_hist:].view(
            c.num_documents, c.num_categories, len(SCALAR_FIELDS))
        self._edges = c.bin_edges(device=self.state.device)
        self._reduced = False

    # ------------------------------------------------------------------ update
    def update(self, stats: TokenStats, mask: torch.Tensor | None = None,
               doc_ids: torch.Tensor | None = None) -> None:
        """Add tokens. ``mask``: categories (0 = not scored) with the stats' shape;
        bool means category 1; ``None`` scores every token as category 1.
        ``doc_ids``: per-token trajectory index in ``[0, num_documents)`` (negative =
        none, only on unscored tokens); required exactly when ``num_documents`` is set."""
        if self._reduced:
            raise RuntimeError(
                "update() after all_reduce(): the state already holds the sum over ranks; "
                "call reset() or use a fresh accumulator"
            )
        self._check_stats_k(stats)
        shape = stats.valid.shape
        if mask is None:
            cat = torch.ones(shape, dtype=torch.long, device=stats.valid.device)
        else:
            if tuple(mask.shape) != tuple(shape):
                raise ValueError(f"mask shape {tuple(mask.shape)} != token stats shape {tuple(shape)}")
            if mask.dtype.is_floating_point:
                raise TypeError(f"mask must hold integer categories or bools, got {mask.dtype}")
            cat = mask.to(device=stats.valid.device, dtype=torch.long)
        cat = cat.reshape(-1)
        if cat.numel() == 0:
            return
        lo, hi = int(cat.min()), int(cat.max())
        if lo < 0 or hi > self.config.num_categories:
            raise ValueError(
                f"mask categories must be in [0, {self.config.num_categories}] "
                f"({', '.join(self.config.category_names)}), found values in [{lo}, {hi}]"
            )
        tracked = self.trajectories is not None
        if tracked != (doc_ids is not None):
            raise ValueError(
                f"this accumulator tracks {self.config.num_documents} trajectories: pass doc_ids" if tracked else
                "doc_ids given but the accumulator keeps no per-trajectory sums: set num_documents")
        doc = traj.document_index(doc_ids, shape, self.config.num_documents, cat > 0) if tracked else None
        dev = self.state.device
        sel = (cat > 0).to(dev)
        cat = cat.to(dev)[sel] - 1
        valid = stats.valid.reshape(-1).to(dev)[sel]
        h = stats.entropy.reshape(-1).to(dev, torch.float64)[sel]
        logp = stats.logp.reshape(-1).to(dev, torch.float64)[sel]
        logq = stats.logq.reshape(-1).to(dev, torch.float64)[sel]
        in_topk = stats.in_topk.reshape(-1).to(dev)[sel] & valid
        top1 = stats.top1.reshape(-1).to(dev)[sel] & valid

        zero = torch.zeros((), dtype=torch.float64, device=dev)
        h0 = torch.where(valid, h, zero)
        nll = torch.where(valid, -logp, zero)
        pos = in_topk & (h0 > 0)
        p_over_h = torch.where(pos, torch.exp(torch.where(pos, logp, zero)) / torch.where(pos, h0, 1.0), zero)
        q_over_h = torch.where(pos, torch.exp(torch.where(pos, logq, zero)) / torch.where(pos, h0, 1.0), zero)
        he = in_topk & (h0 > self.config.threshold)
        f = valid.double()
        cols = torch.stack(
            [
                f,
                (~valid).double(),
                nll,
                h0,
                top1.double(),
                in_topk.double(),
                he.double(),
                torch.where(he, p_over_h, zero),
                torch.where(he, q_over_h, zero),
                torch.where(he, nll, zero),
            ],
            dim=1,
        )
        self.scalars.index_add_(0, cat, cols)
        if tracked:
            traj.add_rows(self.trajectories, doc.to(dev)[sel], cat, cols)

        # Histogram over M (valid tokens): bucketize on the interior edges gives
        # i with e_i < H <= e_{i+1}, i.e. the right-closed bins described above.
        b = torch.bucketize(h0[valid], self._edges[1:-1], right=False)
        vcat = cat[valid]
        vin = in_topk[valid].double()
        bins = torch.stack(
            [
                torch.ones_like(vin),
                vin,
                p_over_h[valid],
                q_over_h[valid],
                nll[valid] * vin,
            ],
            dim=1,
        )
        self.hist.view(-1, len(BIN_FIELDS)).index_add_(0, vcat * self.config.num_bins + b, bins)

    # ------------------------------------------------------------- reduction
    def all_reduce(self, group=None) -> "HESNRAccumulator":
        """Sum the state over ``group`` (once). ``None`` or a size-1 group: no-op.

        Pass Megatron's data-parallel x context-parallel group (never the TP group:
        TP ranks hold identical copies of every token).
        """
        import torch.distributed as dist

        multi = group is not None and dist.get_world_size(group=group) > 1
        if multi:
            # Every rank checks the same gathered fingerprints (config, size, reduced)
            # before the sum, so a disagreement raises everywhere instead of hanging.
            from .rank_agreement import agree_or_raise

            agree_or_raise(fingerprint(self), FINGERPRINT_FIELDS, group, self.state.device,
                           "data-parallel ranks' accumulators",
                           "Every rank must reduce an accumulator of the same config (k, threshold, "
                           "num_bins, category_names), not yet reduced", show=show_fingerprint)
        if self._reduced:
            raise RuntimeError("all_reduce() called twice: the counts would be multiplied")
        if multi:
            dist.all_reduce(self.state, op=dist.ReduceOp.SUM, group=group)
        self._reduced = True
        return self

    def reset(self) -> None:
        self.state.zero_()
        self._reduced = False

    def merge(self, other: "HESNRAccumulator") -> "HESNRAccumulator":
        """Add another accumulator's sums (same config) into this one."""
        if not isinstance(other, HESNRAccumulator):
            raise TypeError(f"cannot merge {type(other).__name__} into HESNRAccumulator")
        check_mergeable(self, other)
        self.state += other.state.to(self.state.device)
        return self

    # ---------------------------------------------------------------- results
    def _select(self, table: torch.Tensor, category: str | int | None) -> torch.Tensor:
        """``table``'s row for one category, or the sum over all of them."""
        if category is None or category == "all":
            return table.sum(dim=0)
        names = self.config.category_names
        if isinstance(category, str):
            if category not in names:
                raise KeyError(f"unknown category {category!r}; known: {names}")
            return table[names.index(category)]
        if not 1 <= category <= len(names):
            raise KeyError(f"category id {category} outside 1..{len(names)}")
        return table[category - 1]

    def sums(self, category: str | int | None = None) -> dict:
        row = self._select(self.scalars, category).cpu()
        return {name: float(row[i]) for name, i in _F.items()}

    def histogram(self, category: str | int | None = None) -> dict:
        """H_k histogram: ``edges`` (num_bins + 1) and each per-bin field as a list."""
        hist = self._select(self.hist, category).cpu()
        out = {"edges": self._edges.cpu().tolist()}
        out.update({name: hist[:, i].tolist() for name, i in _B.items()})
        return out

    def trajectory_rows(self, category: str | int | None = None) -> torch.Tensor | None:
        """Per-trajectory sums ``[num_documents, len(SCALAR_FIELDS)]`` of one category
        (or summed over all), on the CPU; ``None`` when trajectories are not tracked."""
        if self.trajectories is None:
            return None
        return self._select(self.trajectories.transpose(0, 1), category).cpu()

    def uncertainty(self, category: str | int | None = None) -> dict:
        """``num_documents`` and the trajectory-clustered ``*_stderr`` (when tracked)."""
        rows = self.trajectory_rows(category)
        if rows is None:
            return {"num_documents": None}
        rows = rows[traj.present(rows, SCALAR_FIELDS)]
        return {"num_documents": int(rows.shape[0]), **stderr_metrics(rows.numpy(), SCALAR_FIELDS)}

    def compute(self) -> dict:
        """Overall metrics, plus ``by_category`` for every category that has tokens."""
        out = metrics_from_sums(self.sums())
        out.update(self.uncertainty(None))
        out["threshold"] = self.config.threshold
        out["by_category"] = {
            name: {**metrics_from_sums(self.sums(name)), **self.uncertainty(name)}
            for i, name in enumerate(self.config.category_names)
            if float(self.scalars[i, _F["num_tokens"]] + self.scalars[i, _F["num_invalid"]]) > 0
        }
        return out

    def sweep(self, thresholds, category: str | int | None = None) -> list[dict]:
        """HE-SNR for many thresholds from the histogram (one pass, no recompute).

        For a threshold ``eps`` the bins whose lower edge is >= eps are summed, so
        the result is exact when ``eps`` is a bin edge (the edge used is returned
        as ``edge``); between edges, tokens with eps < H_k <= edge are left out.
        The configured threshold itself is answered from its exact sums.
        """
        hist = self._select(self.hist, category).cpu().numpy()
        return sweep_histogram(hist, self._edges.cpu().numpy(), self.sums(category), self.config, thresholds)

    # ---------------------------------------------------------- serialisation
    def state_dict(self) -> dict:
        """JSON-friendly state: config, field names and the sums as nested lists."""
        cfg = asdict(self.config)
        cfg["category_names"] = list(self.config.category_names)
        if cfg["num_documents"] is None:
            del cfg["num_documents"]  # untracked states keep the layout of earlier records
        d = {
            "version": STATE_VERSION,
            "config": cfg,
            "scalar_fields": list(SCALAR_FIELDS),
            "bin_fields": list(BIN_FIELDS),
            "scalars": self.scalars.cpu().tolist(),
            "hist": self.hist.cpu().tolist(),
            "reduced": self._reduced,
        }
        if self.trajectories is not None:
            d[TABLE_KEY] = traj.table_to_json(self.trajectories, SCALAR_FIELDS, self.config.category_names)
        return d

    def load_state_dict(self, d: dict) -> "HESNRAccumulator":
        """Load a :meth:`state_dict`; raises ``StateError`` (a ``ValueError``) naming the
        field for anything that would not save back exactly (see ``state_check``)."""
        cfg, scalars, hist, reduced, table = validate_state_dict(d)
        if cfg != self.config:
            raise StateError(f"state config {cfg} != accumulator config {self.config}")
        self._load(scalars, hist, reduced, table)
        return self

    @classmethod
    def from_state_dict(cls, d: dict, device=None) -> "HESNRAccumulator":
        cfg, scalars, hist, reduced, table = validate_state_dict(d)
        return cls(cfg, device=device)._load(scalars, hist, reduced, table)

    def _load(self, scalars, hist, reduced, table) -> "HESNRAccumulator":
        self.scalars.copy_(scalars)
        self.hist.copy_(hist)
        if table is not None:
            self.trajectories.copy_(table)
        self._reduced = reduced
        return self

    # ------------------------------------------------------------- checks
    def _check_stats_k(self, stats: TokenStats) -> None:
        """Stats of another ``k`` would put wrong H_k into every sum and bin."""
        k = getattr(stats, "k", None)
        if k is not None and k != self.config.k:
            raise ValueError(f"token stats were computed with k={k} but this accumulator measures "
                             f"k={self.config.k}: pass token_stats(..., k={self.config.k})")
        h = stats.entropy[stats.valid]
        if h.numel() and float(h.max()) > math.log(self.config.k) * (1 + 1e-6):
            raise ValueError(f"token stats hold H_k = {float(h.max()):.6f} > ln k = {math.log(self.config.k):.6f}: "
                             f"they were computed with a k larger than this accumulator's k={self.config.k}")
