"""Pytest fixtures for tests that need a real Slurm cluster (``tests/slurm_cluster.py``).

``slurm_cluster`` (module scope): a two-node cluster (n1, n2) started for the module and
stopped, daemons by PID and ``/etc/hosts`` restored, when the module ends, whatever its tests
did. Where Slurm cannot be installed the tests skip with the reason; under ``CI=true`` they
fail instead.  ``Job`` submits, waits for and inspects batch jobs.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path

import pytest

from conftest import IN_CI
from slurm_cluster import ClusterError, SlurmCluster, install_slurm

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def say(config, line: str) -> None:
    """A line on stderr past pytest's capture, whatever its mode (times for the CI log)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        sys.stderr.write(f"\n{line}\n")
        sys.stderr.flush()


def _cluster(request, tmp_path_factory, **kw):
    try:
        install_slurm()
    except ClusterError as exc:
        if IN_CI:
            pytest.fail(f"CI needs Slurm: {exc}")
        pytest.skip(str(exc))
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), **kw)
    cluster.start()
    say(request.config, f"[slurm] cluster up in {cluster.start_seconds:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm_cluster(request, tmp_path_factory):
    """Nodes that declare eight GPUs each (the example scripts' ``--gpus-per-node=8`` as written)."""
    yield from _cluster(request, tmp_path_factory, kill_wait=20)


@pytest.fixture(scope="module")
def slurm_cluster_without_gpus(request, tmp_path_factory):
    """Nodes that declare no GPUs (no ``Gres=``), as a CPU-only cluster."""
    yield from _cluster(request, tmp_path_factory, kill_wait=20, gpus_per_node=0)


class Job:
    """One batch job: ``sbatch`` it, follow its state and its output file."""

    def __init__(self, cluster: SlurmCluster, out: Path, script: Path, sbatch_opts: list[str], args: list[str],
                 env: dict):
        self.cluster, self.out = cluster, out
        out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        p = cluster.run_env(env, "sbatch", "--parsable", f"--chdir={out}", f"--output={out}/slurm-%j.out",
                            *sbatch_opts, str(script), *args)
        self.id = p.stdout.strip().split(";")[0]
        self.seconds: float | None = None

    @property
    def log_path(self) -> Path:
        return self.out / f"slurm-{self.id}.out"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def info(self) -> dict:
        p = self.cluster.run("scontrol", "show", "job", "-o", self.id, check=False, timeout=20)
        return dict(re.findall(r"(\w+)=(\S*)", p.stdout))

    def wait_for(self, needle: str | re.Pattern, timeout: float, count: int = 1) -> None:
        """Until the output has ``count`` matches of ``needle`` (a job that ends first fails the test)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            n = len(needle.findall(log)) if isinstance(needle, re.Pattern) else log.count(needle)
            if n >= count:
                return
            state = self.info().get("JobState")
            if state in FINAL or time.monotonic() > deadline:
                raise AssertionError(f"job {self.id} ({state}) never printed {needle!r} x{count}; output tail:\n"
                                     f"{log[-5000:]}")
            time.sleep(0.5)

    def wait(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info()
            if info.get("JobState") in FINAL:
                self.seconds = time.monotonic() - self.t0
                return info
            if time.monotonic() > deadline:
                self.cluster.run("scancel", self.id, check=False)
                raise AssertionError(f"job {self.id} not finished after {timeout} s ({info.get('JobState')}); "
                                     f"output tail:\n{self.log()[-5000:]}")
            time.sleep(1)
