"""Single-process checks of the TP merge's header, checksums and merge."""
from __future__ import annotations

import torch

from megatron_hesnr.metric.shard_stats import ShardStats, merge_shard_stats, shard_stats_torch
from megatron_hesnr.metric.tp_merge import HEADER_FIELDS, _header, labels_checksums
from megatron_hesnr.metric.vocab import vocab_shard


def _sums(labels):
    return [int(c) for c in labels_checksums(labels)]


def test_labels_checksums_see_order_value_and_ignore_ids():
    labels = torch.tensor([5, 17, -100, 151935, 0])
    base = _sums(labels)
    assert _sums(labels.clone()) == base
    assert _sums(labels[[1, 0, 2, 3, 4]]) != base  # swapped positions
    changed = labels.clone()
    changed[3] -= 1
    assert _sums(changed) != base
    changed = labels.clone()
    changed[2] = -1  # one ignore id for another
    assert _sums(changed) != base
    assert all(0 <= c < 2**24 for c in base)


def test_labels_checksums_catch_compensating_edits():
    """Issue 16 case 4: +2 at one position, -1 at the next cancelled in the old
    position-weighted sum; small structured edits change both checksums."""
    labels = torch.randint(0, 151936, (8192,), generator=torch.Generator().manual_seed(0))
    base = _sums(labels)
    edits = [((0, 2), (1, -1)), ((0, 1), (1, -2), (2, 1)), ((5, 1), (6, -3), (7, 3), (8, -1)),
             ((100, 1), (100 + 4096, -1)), ((9, 4), (10, -1))]
    for edit in edits:
        changed = labels.clone()
        for pos, delta in edit:
            changed[pos] += delta
        got = _sums(changed)
        assert got[0] != base[0] and got[1] != base[1], edit
    changed = labels.clone()
    changed[3] += 16_777_213  # a multiple of the first prime: the second checksum sees it
    assert _sums(changed) != base


def test_labels_checksums_catch_every_single_change():
    labels = torch.zeros(5000, dtype=torch.long)
    base = _sums(labels)
    for pos in range(0, 5000, 7):
        for delta in (1, -1, 2, 151935, 16_777_199, -16_777_213):
            changed = labels.clone()
            changed[pos] = delta
            assert _sums(changed) != base, (pos, delta)


def test_header_is_exact_for_large_token_counts():
    n = 3 * 2**24 + 12345  # int64 header: no split
    h = _header(n, 10, torch.float32, 18992, 151643, torch.zeros(4, dtype=torch.long))
    assert int(h[0]) == n and h.numel() == len(HEADER_FIELDS) and h.dtype == torch.int64


def test_merge_of_simulated_shards_equals_whole_vocabulary():
    """The merge alone (no processes): 3 shards of a padded vocabulary, one all padding."""
    g = torch.Generator().manual_seed(0)
    vocab, local = 70, 32  # padded 96: shard 2 holds ids 64..95, only 64..69 real
    logits = torch.randn(40, 3 * local, generator=g) * 3
    labels = torch.randint(0, vocab, (40,), generator=g)
    whole = shard_stats_torch(logits[:, :vocab], labels, vocab_shard(0, vocab), k=10)
    parts = [shard_stats_torch(logits[:, r * local:(r + 1) * local], labels, vocab_shard(r, local, vocab), k=10)
             for r in range(3)]
    stacked = ShardStats.unpack(torch.stack([p.pack() for p in parts]))
    merged = merge_shard_stats(stacked)
    torch.testing.assert_close(merged.max, whole.max, rtol=0, atol=0)
    torch.testing.assert_close(merged.target, whole.target, rtol=0, atol=0)
    torch.testing.assert_close(merged.topk, whole.topk, rtol=0, atol=0)
    torch.testing.assert_close(merged.sumexp, whole.sumexp, rtol=1e-6, atol=0)
