"""Is an engine's answer for one prompt position possible?  Checked before anything is counted.

An engine answers, for one target ``y``, the top ``k`` tokens with their full-vocabulary
log-probabilities and ranks, plus ``y`` with its own (see :mod:`.engine_logprobs`).  Whether
``y`` is in the top k is decided by its **rank** (the number of tokens at least as likely as
``y``), never by how many entries came back; the entries must then be what that rank implies:

* every token id an integer in ``[0, id_bound)``, each id once;
* every log-probability at most ``LOGPROB_TOL`` (a probability is at most 1), and the entries'
  probabilities (distinct tokens) summing to at most ``1 + PROB_SUM_TOL``;
* every rank a positive JSON integer (not a bool, a fraction or a string);
* ``y``'s rank at least one more than the listed tokens strictly more likely than ``y``;
  ``rank <= k``: ``y`` is among exactly ``k`` entries (vLLM gives a listed token its place in
  the list); ``rank > k``: ``y`` comes beside ``k`` others, none less likely than ``y`` (an
  exact tie with the k-th, not picked, is counted inside by
  :func:`~megatron_hesnr.metric.topk_stats.token_stats_from_topk`).

Anything else is an answer that cannot be true: :class:`ImpossibleAnswer`, which names the field
(the caller adds the server and the position) and is never retried or counted.
"""
from __future__ import annotations

import math

#: A log-probability above this (float rounding of ``log 1``) is impossible.
LOGPROB_TOL = 1e-4
#: The listed tokens' probabilities may add up to at most ``1 + PROB_SUM_TOL``.
PROB_SUM_TOL = 1e-3
#: Two log-probabilities closer than this count as equal when ranks are checked against them.
VALUE_TOL = 1e-6


class MalformedLogprobs(ValueError):
    """A response that does not hold what was asked for (truncated, wrong length, missing ids)."""


class ImpossibleAnswer(MalformedLogprobs):
    """A well-formed response whose values cannot be true (final: not retried, nothing counted)."""


def id_bound(vocab_size: int) -> int:
    """Token ids an engine may return for sets prepared with a ``vocab_size``-id tokenizer: the model's
    embedding may be padded beyond the tokenizer (to a multiple of 128 x TP, or Qwen's 151665 -> 152064),
    so the bound is the tokenizer's size rounded up to a multiple of 4096."""
    return -(-int(vocab_size) // 4096) * 4096


def check_rank(value, tok: int) -> int:
    """A rank as JSON gave it -> int, or :class:`ImpossibleAnswer` naming the field."""
    if type(value) is not int or value < 1:  # bool is an int subclass; 2.0 / "1" are not ranks
        raise ImpossibleAnswer(f"token {tok}: field 'rank' is {value!r}, not a positive integer")
    return value


def check_position(y: int, rows, k: int, bound: int | None) -> tuple[list[float], float, int]:
    """``rows``: the ``(token_id, logprob, rank)`` triples of one position (rank may be ``None`` for a
    listed token other than ``y``).  Returns the ``k`` top log-probabilities, ``y``'s and its rank
    (what :func:`~megatron_hesnr.metric.topk_stats.token_stats_from_topk` takes), or raises
    :class:`ImpossibleAnswer` / :class:`MalformedLogprobs` naming the field."""
    seen: set[int] = set()
    target = None
    others: list[float] = []
    total = 0.0
    for tok, lp, rank in rows:
        if tok in seen:
            raise ImpossibleAnswer(f"token id {tok} is listed twice")
        seen.add(tok)
        if tok < 0 or (bound is not None and tok >= bound):
            raise ImpossibleAnswer(f"token id {tok} is outside the vocabulary (0 .. {bound - 1 if bound else '...'})")
        if lp > LOGPROB_TOL:
            raise ImpossibleAnswer(f"token {tok}: field 'logprob' is {lp!r}, above 0 (a probability above 1)")
        if rank is not None or tok == y:
            if rank is None:
                raise MalformedLogprobs(f"gives no rank for the prompt's token {y}")
            rank = check_rank(rank, tok)
        if not math.isnan(lp):
            total += math.exp(lp)
        if tok == y:
            target = (lp, rank)
        else:
            others.append(lp)
    if target is None:
        raise MalformedLogprobs(f"lacks the prompt's token {y}")
    if total > 1.0 + PROB_SUM_TOL:
        raise ImpossibleAnswer(f"field 'logprob': the {len(rows)} listed tokens' probabilities add up to "
                               f"{total:.6g}, above 1")
    t, rank = target
    if math.isnan(t) or any(math.isnan(v) for v in others):
        # not a number: the row is counted invalid downstream, as the hook counts a NaN logit
        top = others if len(others) == k else others + [t]
        if len(top) != k:
            raise MalformedLogprobs(f"holds {len(rows)} entries, expected k={k} or k+1")
        return top, t, rank
    above = sum(v > t + VALUE_TOL for v in others)
    if rank < 1 + above:
        raise ImpossibleAnswer(f"token {y}: field 'rank' is {rank} but {above} listed tokens are more likely")
    if len(others) == k:  # y beside the top k: outside them, or tied with the k-th and not picked
        if rank <= k:
            raise ImpossibleAnswer(f"token {y}: field 'rank' is {rank} <= k={k}, yet it comes beside {k} other "
                                   "tokens (outside the top k)")
        if t > min(others) + VALUE_TOL:
            raise ImpossibleAnswer(f"token {y}: field 'logprob' {t!r} exceeds a listed top-{k} token's "
                                   f"{min(others)!r}, yet it comes outside the top k")
        return others, t, rank
    if len(others) == k - 1:  # y among the top k
        if rank > k:
            raise ImpossibleAnswer(f"token {y}: field 'rank' is {rank} > k={k}, yet it is listed among the top k")
        at_least = sum(v >= t - VALUE_TOL for v in others)
        if others and t > min(others) + VALUE_TOL and rank > 1 + at_least:
            raise ImpossibleAnswer(f"token {y}: field 'rank' is {rank} but only {at_least} listed tokens are as "
                                   "likely (every unlisted token is less likely)")
        return others + [t], t, rank
    raise MalformedLogprobs(f"holds {len(rows)} entries, expected k={k} or k+1 (rank {rank})")
