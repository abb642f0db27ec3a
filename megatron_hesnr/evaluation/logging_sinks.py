"""Where results go: a Megatron-style validation line, TensorBoard and W&B.

All functions take plain values (no Megatron globals) and are called on the last
rank only, like Megatron's own validation logging.
"""
from __future__ import annotations

import logging
import math
import sys

from ..metric.stderr import STDERR_SUFFIX

#: Scalars shown on the line and sent to TensorBoard / W&B, in this order.
LINE_METRICS = ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "high_entropy_fraction",
                "num_high_entropy", "num_tokens")

#: Metrics defined over the high-entropy tokens only (NaN when there is none).
HE_METRICS = ("hesnr", "hesnr_topk", "he_ppl")

_line_log = logging.getLogger("megatron_hesnr.validation")


def _stdout_logger() -> logging.Logger:
    # Megatron prints its validation lines to stdout; ours must show up beside them
    # even when the root logger has no handler.
    if not _line_log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(message)s"))
        _line_log.addHandler(h)
        _line_log.setLevel(logging.INFO)
        _line_log.propagate = False
    return _line_log


def select(metrics: dict, category: str) -> dict | None:
    """Overall metrics ('all') or one category's (``None`` when it has no tokens)."""
    if category == "all":
        return metrics
    return metrics.get("by_category", {}).get(category)


def format_validation_line(dataset: str, iteration: int, metrics: dict, categories=("action",)) -> str:
    """`` validation hesnr-<set> at iteration N | hesnr value: ... | ...`` (Megatron's layout)."""
    parts = [f" validation hesnr-{dataset} at iteration {iteration} | "]
    for cat in ("all", *[c for c in categories if c != "all"]):
        m = select(metrics, cat)
        if m is None:
            continue
        tag = "" if cat == "all" else f"{cat} "
        for key in LINE_METRICS:
            v = m[key]
            parts.append(f"{tag}{key} value: {_with_stderr(v, m.get(key + '_stderr'))} | "
                         if isinstance(v, float) else f"{tag}{key}: {v} | ")
    return "".join(parts)


def _with_stderr(value: float, stderr) -> str:
    """``X`` or, when a trajectory-clustered stderr is known, ``X ± SE``."""
    if isinstance(stderr, float) and math.isfinite(stderr):
        return f"{value:.6E} ± {stderr:.2E}"
    return f"{value:.6E}"


def print_validation_line(line: str) -> None:
    rule = "-" * (len(line) + 1)
    log = _stdout_logger()
    log.info(rule)
    log.info(line)
    log.info(rule)


def _tagged(dataset: str, metrics: dict, categories):
    """``(tag, metric name, value or None)`` in logging order: each :data:`LINE_METRICS` value,
    then its trajectory-clustered standard error (``<metric>_stderr``) when the metric has one."""
    for cat in ("all", *[c for c in categories if c != "all"]):
        m = select(metrics, cat)
        if m is None:
            continue
        for key in LINE_METRICS:
            yield f"hesnr/{dataset}/{cat}/{key}", key, m[key]
            if key + STDERR_SUFFIX in m:
                yield f"hesnr/{dataset}/{cat}/{key}{STDERR_SUFFIX}", key + STDERR_SUFFIX, m[key + STDERR_SUFFIX]


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def print_note(note: str) -> None:
    """A line beside the validation lines (same logger, at INFO: Megatron-Bridge's default
    ``logger.filter_warnings=True`` drops every WARNING record, so a warning would go unseen there)."""
    _stdout_logger().info(note)


def scalars(dataset: str, metrics: dict, categories=("action",)) -> dict:
    """``{"hesnr/<set>/<category>/<metric>": value}`` for finite values, each standard error
    (``.../<metric>_stderr``) right after its value.  NaN values are left out (see :func:`left_out`)."""
    return {tag: float(v) for tag, _key, v in _tagged(dataset, metrics, categories) if _finite(v)}


def left_out(dataset: str, metrics: dict, categories=("action",)) -> dict:
    """``{category: [metric, ...]}`` of the values :func:`scalars` leaves out (NaN or infinite)."""
    out: dict = {}
    for tag, key, v in _tagged(dataset, metrics, categories):
        if not _finite(v):
            out.setdefault(tag.split("/")[2], []).append(key)
    return out


def left_out_message(dataset: str, iteration: int, metrics: dict, categories=("action",)) -> str | None:
    """One line naming what :func:`scalars` leaves out and why (``None`` when nothing is)."""
    missing = left_out(dataset, metrics, categories)
    if not missing:
        return None
    parts = []
    for cat, keys in missing.items():
        m = select(metrics, cat) or {}
        reasons: dict = {}
        for key in keys:
            if not m.get("num_tokens"):
                why = "no scored token"
            elif not m.get("num_high_entropy") and key.removesuffix(STDERR_SUFFIX) in HE_METRICS:
                why = "no high-entropy token"
            else:
                why = f"undefined over {m.get('num_documents')} trajectories"
            reasons.setdefault(why, []).append(key)
        parts.append(f"{cat}: " + ", ".join(f"{', '.join(k)} ({why})" for why, k in reasons.items()))
    return (f"HE-SNR set {dataset} at iteration {iteration}: NaN, left out of TensorBoard, W&B and "
            f"Bridge's total_loss_dict: " + "; ".join(parts))


def write_tensorboard(writer, dataset: str, iteration: int, consumed_samples, metrics: dict, hist: dict | None,
                      categories=("action",)) -> None:
    """Scalars (per iteration and vs samples) and the H_k histogram of the scored tokens."""
    for tag, v in scalars(dataset, metrics, categories).items():
        writer.add_scalar(tag, v, iteration)
        if consumed_samples is not None:
            writer.add_scalar(f"{tag} vs samples", v, consumed_samples)
    if hist is not None and sum(hist["count"]) > 0:
        edges, counts = hist["edges"], hist["count"]
        nz = [i for i, c in enumerate(counts) if c > 0]
        centers = [(edges[i] + edges[i + 1]) / 2 for i in range(len(counts))]
        # The raw values are gone; sums use bin centres (exact counts, approximate moments).
        writer.add_histogram_raw(
            tag=f"hesnr/{dataset}/entropy_topk",
            min=edges[nz[0]], max=edges[nz[-1] + 1], num=int(sum(counts)),
            sum=sum(c * x for c, x in zip(counts, centers)),
            sum_squares=sum(c * x * x for c, x in zip(counts, centers)),
            bucket_limits=edges[1:], bucket_counts=counts, global_step=iteration,
        )


def write_wandb(wandb_writer, dataset: str, iteration: int, metrics: dict, categories=("action",)) -> None:
    wandb_writer.log(scalars(dataset, metrics, categories), iteration)
