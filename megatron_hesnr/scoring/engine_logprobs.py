"""An engine's ``prompt_logprobs`` of one prompt -> :class:`TokenStats` of its targets.

vLLM returns, for prompt position ``j >= 1``, a mapping ``token id -> (logprob, rank)`` holding
the ``k`` most likely tokens and the actual token ``prompt[j]`` (with its true rank; one more
entry when it lies outside the top k); position 0 is ``None``.  The offline engine gives
``Logprob`` objects, the server JSON with the ids as string keys; both come here as
``(id, logprob, rank)`` triples.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..metric.token_stats import TokenStats
from ..metric.topk_stats import token_stats_from_topk
from .answer_checks import ImpossibleAnswer, MalformedLogprobs, check_position

__all__ = ["ImpossibleAnswer", "MalformedLogprobs", "stats_from_prompt_logprobs", "offline_positions",
           "json_positions"]


def stats_from_prompt_logprobs(prompt: np.ndarray, positions, k: int, id_bound: int | None = None) -> TokenStats:
    """``positions``: one entry per prompt token, each ``None`` (position 0) or an iterable of
    ``(token_id, logprob, rank)``.  Returns the stats of targets ``1 .. len(prompt) - 1``; every
    position is checked first (:func:`~.answer_checks.check_position`; ids below ``id_bound``)."""
    n = len(prompt)
    if positions is None or len(positions) != n:
        got = None if positions is None else len(positions)
        raise MalformedLogprobs(f"prompt_logprobs has {got} positions for a {n}-token prompt")
    topk = np.empty((n - 1, k), dtype=np.float64)
    target = np.empty(n - 1, dtype=np.float64)
    rank = np.empty(n - 1, dtype=np.int64)
    for j in range(1, n):
        entries = positions[j]
        if entries is None:
            raise MalformedLogprobs(f"prompt_logprobs position {j} is empty")
        y = int(prompt[j])
        try:
            top, t, r = check_position(y, entries, k, id_bound)
        except MalformedLogprobs as exc:
            raise type(exc)(f"prompt_logprobs position {j} {exc}") from None
        topk[j - 1] = top
        target[j - 1], rank[j - 1] = t, r
    # The engine writes -inf as a large negative number or a string; anything non-finite is invalid.
    return token_stats_from_topk(torch.from_numpy(topk), torch.from_numpy(target), torch.from_numpy(rank))


def offline_positions(prompt_logprobs) -> list:
    """vLLM ``RequestOutput.prompt_logprobs`` -> the triples :func:`stats_from_prompt_logprobs` takes."""
    if prompt_logprobs is None:
        return None
    return [None if d is None else [(int(t), lp.logprob, lp.rank) for t, lp in d.items()] for d in prompt_logprobs]


def json_positions(prompt_logprobs) -> list:
    """The server's ``choices[0].prompt_logprobs`` (string id keys) -> triples."""
    out = []
    for d in prompt_logprobs:
        if d is None:
            out.append(None)
            continue
        if not isinstance(d, dict):
            raise MalformedLogprobs(f"prompt_logprobs entry is {type(d).__name__}, not an object")
        row = []
        for t, v in d.items():
            try:
                tok = int(t)
            except (TypeError, ValueError):
                raise MalformedLogprobs(f"prompt_logprobs key {t!r} is not a token id") from None
            if not isinstance(v, dict) or "logprob" not in v:
                raise MalformedLogprobs(f"prompt_logprobs entry {t!r} is malformed (no 'logprob')")
            lp = v["logprob"]
            if lp is None:
                lp = -math.inf
            elif type(lp) not in (int, float, str):
                raise ImpossibleAnswer(f"token {tok}: field 'logprob' is {lp!r}, not a number")
            try:
                lp = float(lp)  # "-inf" written as a string is a number too
            except ValueError:
                raise ImpossibleAnswer(f"token {tok}: field 'logprob' is {lp!r}, not a number") from None
            row.append((tok, lp, v.get("rank")))
        out.append(row)
    return out
