"""Pytest fixtures for tests that need a real Slurm cluster (``tests/slurm_cluster.py``).

``slurm_cluster`` (module scope): a two-node cluster (n1, n2) started for the module and
stopped, daemons by PID and ``/etc/hosts`` restored, when the module ends, whatever its tests
did. Where Slurm cannot be installed the tests skip with the reason; under ``CI=true`` they
fail instead.  ``Job`` submits, waits for and inspects batch jobs.
"""
from __future__ import annotations

import contextlib
import json
import re
import socket
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


def hurry_requeued(cluster, job: Job, timeout: float = 300) -> None:
    """A requeued job is held back before it is eligible again (BeginTime, about two minutes
    on this Slurm); make it eligible sooner, as an administrator may (``StartTime=now``), but
    not too soon. The hold exists for a reason: when the previous run of the job ends, its
    nodes revoke its credential, and a start whose credential dates from the same second is
    refused ("Killing non-startable batch JobId=N: Job credential revoked"): the job ends
    FAILED instead of running again. So: pending, its nodes idle again (done with the previous
    run), a new second begun, then ``StartTime=now``."""
    deadline = time.monotonic() + timeout
    while job.info().get("JobState") != "PENDING":
        assert time.monotonic() < deadline, f"job {job.id} not requeued: {job.info()}"
        time.sleep(0.5)
    while True:
        q = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=20)
        states = dict(x.split() for x in q.stdout.splitlines() if x.strip())
        if q.returncode == 0 and states and all(s == "idle" for s in states.values()):
            break
        assert time.monotonic() < deadline, f"nodes not idle after the requeue of job {job.id}: {q.stdout}"
        time.sleep(0.5)
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job.id}", "StartTime=now", check=False)


def node_pids(cluster: SlurmCluster, job_id: str, node: str) -> list[int]:
    """The job's processes that node started (their environment names both, and this cluster's
    ``SLURM_CONF``: another test cluster on the machine numbers its jobs and names its nodes alike)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(x.split("=", 1) for x in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in x)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node and "SLURM_STEP_ID" in env \
                and env.get("SLURM_CONF") == str(cluster.conf):
            pids.append(int(d.name))
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def finish(job: Job, name: str, times: dict, timeout: float) -> dict:
    """Wait for ``job`` to end; its wall time goes into ``times`` as ``job <name>``."""
    info = job.wait(timeout)
    times[f"job {name}"] = job.seconds
    return info


def report_wall_times(request, label: str, times: dict):
    """Body of a module fixture: the module's and each job's wall time, past pytest's capture."""
    t0 = time.monotonic()
    yield
    times["module"] = time.monotonic() - t0
    say(request.config, f"{label} wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
