"""Single-process checks of the TP merge's header and backend handling."""
from __future__ import annotations

import pytest
import torch

from megatron_hesnr.shard_stats import ShardStats, merge_shard_stats, shard_stats_torch
from megatron_hesnr.tp_merge import HEADER_FIELDS, _check_headers, _header, labels_checksum
from megatron_hesnr.vocab import vocab_shard


def test_labels_checksum_sees_order_value_and_ignore_ids():
    labels = torch.tensor([5, 17, -100, 151935, 0])
    base = int(labels_checksum(labels))
    assert int(labels_checksum(labels.clone())) == base
    assert int(labels_checksum(labels[[1, 0, 2, 3, 4]])) != base  # swapped positions
    changed = labels.clone()
    changed[3] -= 1
    assert int(labels_checksum(changed)) != base
    changed = labels.clone()
    changed[2] = -1  # one ignore id for another
    assert int(labels_checksum(changed)) != base
    assert 0 <= base < 2**24  # exact in the fp32 header


def test_header_is_exact_for_large_token_counts():
    n = 3 * 2**24 + 12345  # beyond fp32's exact integers: split in two fields
    h = _header(n, 10, 18992, 151643, None, "cpu")
    assert int(h[0]) + int(h[1]) * 2**24 == n
    with pytest.raises(ValueError, match="local_vocab"):
        _header(8, 10, 2**24, 100, None, "cpu")


def test_header_mismatch_names_the_field():
    a = _header(8, 10, 512, 1000, torch.arange(8), "cpu")
    b = _header(8, 10, 512, 999, torch.arange(8), "cpu")
    _check_headers(torch.stack([a, a]))
    with pytest.raises(ValueError, match="vocab_size") as e:
        _check_headers(torch.stack([a, b]))
    assert "tokens_low" not in str(e.value).split(":")[0]
    assert len(HEADER_FIELDS) == a.numel()


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
