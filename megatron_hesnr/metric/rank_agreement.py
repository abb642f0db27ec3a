"""Checking that the ranks of a collective agree before they exchange data.

A collective whose ranks disagree on shapes aborts the process group (gloo) or
is undefined (NCCL); one whose ranks agree on shapes but not on meaning (two
accumulators with a different threshold, TP shards of different batches) sums
or merges incompatible numbers without a word.  So before such a collective
every rank contributes a small fixed-size *fingerprint* (a few int64 values,
the same count on every rank), one all-gather brings every rank all of them,
and every rank compares the same gathered table: a disagreement raises the
same :class:`RanksDisagree` (a ``ValueError``) with the same message on every
rank, and no rank is left waiting in a later collective.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class RanksDisagree(ValueError):
    """Ranks of one collective were given incompatible inputs."""


def device_backend(group, device: torch.device) -> str:
    """The backend that serves ``device`` in ``group`` ("nccl", "gloo", ...)."""
    backend = str(dist.get_backend(group)).lower()
    if ":" in backend:  # e.g. "cpu:gloo,cuda:nccl" when several backends share a group
        table = dict(part.split(":", 1) for part in backend.split(","))
        return table.get(device.type, backend)
    return backend


def all_gather_flat(buf: torch.Tensor, group, group_size: int) -> torch.Tensor:
    """All-gather a 1-D buffer; returns ``[group_size, len(buf)]`` on ``buf``'s device."""
    backend = device_backend(group, buf.device)
    if backend == "nccl":
        # One flat output, no per-rank copies (NCCL's list all_gather copies out).
        out = torch.empty(group_size * buf.numel(), dtype=buf.dtype, device=buf.device)
        dist.all_gather_into_tensor(out, buf, group=group)
        return out.view(group_size, -1)
    staged = buf
    if backend == "gloo" and buf.device.type != "cpu":
        # gloo works on host memory; what goes through here is tiny next to the logits.
        staged = buf.cpu()
    out = torch.empty((group_size, staged.numel()), dtype=staged.dtype, device=staged.device)
    dist.all_gather(list(out.unbind(0)), staged, group=group)
    return out.to(buf.device)


def gather_fingerprints(values, group, device) -> list[list[int]]:
    """Every rank's ``values`` (a fixed-length list of ints or a 1-D int64 tensor, int64 on
    the wire), by group rank.  One host sync: reading the gathered table."""
    if isinstance(values, torch.Tensor):
        mine = values.to(device=device, dtype=torch.int64).reshape(-1)
    else:
        mine = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    return all_gather_flat(mine, group, dist.get_world_size(group=group)).cpu().tolist()


def check_agreement(rows: list[list[int]], fields: tuple[str, ...], what: str, hint: str, show=None) -> None:
    """Raise :class:`RanksDisagree` if the gathered ``rows`` differ.

    ``rows`` are the same on every rank, so the message is too.  ``show(row)``
    turns one row into the dict printed per rank (default: the raw fields).
    """
    if all(r == rows[0] for r in rows):
        return
    bad = [f for j, f in enumerate(fields) if len({r[j] for r in rows}) > 1]
    show = show or (lambda r: dict(zip(fields, r)))
    per_rank = "; ".join(f"rank {i}: {show(r)}" for i, r in enumerate(rows))
    raise RanksDisagree(f"{what} disagree on {', '.join(bad)} ({per_rank}). {hint}")


def agree_or_raise(values, fields: tuple[str, ...], group, device, what: str, hint: str, show=None) -> None:
    """One all-gather of ``values`` over ``group`` and :func:`check_agreement` on the result."""
    check_agreement(gather_fingerprints(values, group, device), fields, what, hint, show)
