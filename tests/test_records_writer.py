"""The ``writer`` of an evaluation record: which Slurm job and restart wrote it."""
from __future__ import annotations

import os
import socket

import pytest

from megatron_hesnr.evaluation.records import writer_info


def test_outside_slurm():
    w = writer_info({})
    assert w == {"job_id": None, "restart": 0, "host": socket.gethostname(), "pid": os.getpid()}


def test_requeued_job():
    w = writer_info({"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "2"})
    assert (w["job_id"], w["restart"]) == ("4242", 2)


def test_first_start_has_no_restart_count():
    assert writer_info({"SLURM_JOB_ID": "7"})["restart"] == 0


def test_bad_restart_count_names_the_variable():
    with pytest.raises(ValueError, match="SLURM_RESTART_COUNT='x'"):
        writer_info({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "x"})
