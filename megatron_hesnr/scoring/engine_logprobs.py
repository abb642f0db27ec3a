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

from ..token_stats import TokenStats
from ..topk_stats import token_stats_from_topk


class MalformedLogprobs(ValueError):
    """A response that does not hold what was asked for (truncated, wrong length, missing ids)."""


def stats_from_prompt_logprobs(prompt: np.ndarray, positions, k: int) -> TokenStats:
    """``positions``: one entry per prompt token, each ``None`` (position 0) or an iterable of
    ``(token_id, logprob, rank)``.  Returns the stats of targets ``1 .. len(prompt) - 1``."""
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
        rows = [(int(tok), float(lp), r) for tok, lp, r in entries]
        found = [(lp, r) for tok, lp, r in rows if tok == y]
        if not found:
            raise MalformedLogprobs(f"prompt_logprobs position {j} lacks the prompt's token {y}")
        if found[0][1] is None:
            raise MalformedLogprobs(f"prompt_logprobs position {j} gives no rank for the prompt's token {y}")
        if len(rows) == k + 1:  # the target lies outside the top k (or ties the k-th and was not picked)
            top = [lp for tok, lp, _ in rows if tok != y]
        elif len(rows) == k:    # the target is one of the top k
            top = [lp for _, lp, _ in rows]
        else:
            raise MalformedLogprobs(f"prompt_logprobs position {j} holds {len(rows)} entries, expected k={k} "
                                    f"or k+1")
        topk[j - 1] = top
        target[j - 1], rank[j - 1] = found[0][0], int(found[0][1])
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
                lp = v["logprob"]
                row.append((int(t), -math.inf if lp is None else float(lp), v.get("rank")))
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedLogprobs(f"prompt_logprobs entry {t!r} is malformed ({exc})") from None
        out.append(row)
    return out
