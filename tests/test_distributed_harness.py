"""The one way the tests start gloo worlds: failures and hangs are reported, never waited out."""
from __future__ import annotations

import time

import pytest
import torch.distributed as dist

from distributed_harness import run_world


def _ranks(rank, world):
    dist.barrier()
    return rank * 10


def _rank1_raises(rank, world):
    if rank == 1:
        raise ValueError("boom on rank 1")
    time.sleep(60)  # rank 0 is busy (or stuck) well past the failure
    return rank


def _hangs(rank, world):
    time.sleep(60)


def test_results_come_back_in_rank_order(tmp_path):
    assert run_world(_ranks, 3, tmp_path) == [0, 10, 20]


def test_failing_rank_is_reported_and_its_peers_stopped(tmp_path):
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)rank 0: no result \(killed after timeout or by a failing peer\)\n"
                                                r"rank 1 raised:.*ValueError: boom on rank 1"):
        run_world(_rank1_raises, 2, tmp_path, timeout=120)
    assert time.monotonic() - start < 40  # the busy peer was killed, not waited for


def test_hung_world_is_killed_at_its_timeout(tmp_path):
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"rank 0: no result \(killed after timeout"):
        run_world(_hangs, 2, tmp_path, timeout=3)
    assert time.monotonic() - start < 30
