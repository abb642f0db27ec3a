"""Per-token HE-SNR quantities from an engine's top-k log-probabilities.

A serving engine (vLLM's ``prompt_logprobs=k``) returns, per position, the ``k`` largest
log-probabilities normalised over the whole vocabulary, plus the target's own
log-probability and its rank.  These determine every quantity :func:`token_stats` computes
from logits, because log-probabilities differ from logits by one constant per row:

* ``logp = logprob_y``;
* ``H_k``: the entropy of the top-k values renormalised among themselves;
* ``logq = logprob_y - logsumexp(top-k)``;
* ``in_topk``: ``rank <= k``, ``top1``: ``rank == 1``.

Ties: :func:`token_stats` counts a target whose logit *equals* the k-th largest (the largest)
as inside the top k (top-1).  An engine's rank counts every token at least as likely as the
target, so an exact tie ranks the target behind; :func:`token_stats_from_topk` therefore
also counts the target inside when its log-probability equals the k-th (first) returned
value, which gives :func:`token_stats`'s rule whenever the engine's values tie exactly.
"""
from __future__ import annotations

import torch

from .token_stats import TokenStats


def token_stats_from_topk(topk_logprobs: torch.Tensor, target_logprob: torch.Tensor,
                          target_rank: torch.Tensor) -> TokenStats:
    """:class:`TokenStats` of ``N`` tokens from ``topk_logprobs [N, k]`` (any order, full-vocabulary
    log-probabilities), ``target_logprob [N]`` and ``target_rank [N]`` (1 = most likely).

    A row is invalid (NaN values, False flags) when any of its values is not finite or the rank
    is below 1 (e.g. a position the engine did not score).
    """
    if topk_logprobs.dim() != 2 or topk_logprobs.shape[1] < 1:
        raise ValueError(f"topk_logprobs must be [N, k] with k >= 1, got {tuple(topk_logprobs.shape)}")
    n, k = topk_logprobs.shape
    if tuple(target_logprob.shape) != (n,) or tuple(target_rank.shape) != (n,):
        raise ValueError(f"target_logprob {tuple(target_logprob.shape)} and target_rank {tuple(target_rank.shape)} "
                         f"must both be [{n}]")
    v = topk_logprobs.double().sort(dim=1, descending=True).values
    t = target_logprob.double()
    rank = target_rank.to(torch.long)
    valid = torch.isfinite(v).all(dim=1) & torch.isfinite(t) & (rank >= 1)
    v = torch.where(valid[:, None], v, 0.0)
    lse = torch.logsumexp(v, dim=1)
    q = torch.exp(v - lse[:, None])
    entropy = -(q * (v - lse[:, None])).sum(dim=1)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return TokenStats(
        entropy=torch.where(valid, entropy, nan),
        logp=torch.where(valid, t, nan),
        logq=torch.where(valid, t - lse, nan),
        in_topk=valid & ((rank <= k) | (t >= v[:, -1])),
        top1=valid & ((rank == 1) | (t >= v[:, 0])),
        valid=valid,
        k=k,
    )
