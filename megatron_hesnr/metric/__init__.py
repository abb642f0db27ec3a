"""The HE-SNR metric itself, below every front end and the shared evaluation.

From logits to a number, in the order the data flows:

* :mod:`.vocab` and :mod:`.defaults`: Megatron's padded, tensor-parallel vocabulary
  ranges, and the constants of the definition (k, the threshold, the bins);
* :mod:`.shard_stats` (with the fused kernel in :mod:`.kernels`), :mod:`.tp_merge` and
  :mod:`.token_stats`: per-token statistics of one vocabulary shard, merged over TP;
  :mod:`.topk_stats` builds the same statistics from a server's top-k answers;
* :mod:`.accumulator` with :mod:`.trajectory_sums`: the sums over scored tokens (per
  category and per trajectory) and the metrics computed from them;
* :mod:`.state_layout` (no torch) and :mod:`.state_check`: the saved state's layout and
  the rules a state must obey; :mod:`.stderr`: trajectory-level standard errors;
* :mod:`.rank_agreement` and :mod:`.reduction`: the checked collectives over DP x CP and
  the hand-off to the last pipeline stage.

Importing this package loads nothing: the torch-free modules stay torch-free.
"""
