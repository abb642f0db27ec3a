"""NeMo-Run launching the Bridge example with HE-SNR on the two-node test Slurm cluster (CPU scale).

``examples/nemo_run_bridge_hesnr.py`` submits as a user does (``--executor slurm``: NeMo-Run's
``SlurmExecutor`` with ``LocalTunnel``, its torchrun launcher, ``retries`` and Bridge's
``PreemptionPlugin``; NeMo-Run writes the job script and runs ``sbatch --requeue``). The task is
``tests/megatron_launch.py --bridge examples/bridge_pretrain_hesnr.py ...`` (the CPU shim and
Bridge's import workarounds, then the example) with the tiny recipe (``tests/bridge_tiny_recipe.py``:
2-layer GPT, here 6 iterations, evaluation and checkpoint every 3), two HE-SNR sets (the prepared
real trajectories under two names) and ``--hesnr-eval-at-start``. Each start runs 2 nodes x 1 process.

* ``uninterrupted``: one job; records at 0 (start), 3 and 6 for each set.
* ``preempted``: one job, three starts (``retries=4``: a start lost early on a loaded machine is
  tolerated). Restart 0: after iteration 4 the steps get SIGTERM the way the plugin's
  ``#SBATCH --signal=TERM@60`` delivers it (``scancel --signal=TERM``): Bridge's exit handler
  saves (4 or 5) and exits, torchrun ends non-zero and NeMo-Run's job script requeues the job.
  The next start resumes from that checkpoint, evaluates it at start, and is held there
  (``HESNR_E2E_HOLD_AFTER_START``) until the test kills its processes on n2: the job script
  requeues again. The last start resumes from the same checkpoint, finds its records and does
  not evaluate it again, then trains to 6. On a loaded machine Slurm may requeue the job once more
  (``Nodes n1 not responding``) while a start trains: Bridge's handler saves where it stands, and
  the next start evaluates that checkpoint at start only if no start has recorded it.
* ``reference``: one local process evaluating the saved checkpoints 3 and 6 of ``uninterrupted``
  and the resumed ones of ``preempted`` (``validation.skip_train=true``).

Every record equals the reference or the uninterrupted run's to 1e-5; no (set, iteration) twice.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, require_py312_modules

NEEDS = ("megatron.training", "megatron.bridge", "nemo_run", "omegaconf", "transformers", "tensorboard")
require_py312_modules("test_nemo_run_slurm", NEEDS)

from slurm_fixtures import (  # noqa: E402,F401
    FINAL, Job, finish, free_port, hurry_requeued, node_pids, read_records as _records, report_wall_times, slurm_cluster)
from test_megatron_e2e import assert_same_state  # noqa: E402

LAUNCH = REPO / "tests" / "megatron_launch.py"
EXAMPLE = REPO / "examples" / "nemo_run_bridge_hesnr.py"
BRIDGE_EXAMPLE = REPO / "examples" / "bridge_pretrain_hesnr.py"
REFERENCE = REPO / "tests" / "bridge_eval_checkpoints.py"
SETS = ("swe", "gym")
RECIPE = ["--recipe", "bridge_tiny_recipe:tiny_gpt_pretrain_config", "train.train_iters=6",
          "validation.eval_interval=3", "checkpoint.save_interval=3"]
TIMEOUT = 480
TIMES: dict[str, float] = {}
LOADED = re.compile(r"successfully loaded checkpoint from \S+ .*?at iteration (\d+)")


def _keys(records: list[dict]) -> list[tuple]:
    return [(r["dataset"], r["iteration"]) for r in records]


class NemoRunJob(Job):
    """The job NeMo-Run submitted: its id and its output, one ``log-*_<id>_<restart>.out`` per start."""

    def __init__(self, cluster, job_id: str, job_dir: Path):
        self.cluster, self.id, self.job_dir = cluster, job_id, job_dir
        self.t0, self.seconds = time.monotonic(), None

    def starts(self) -> dict[int, str]:
        out = {}
        for f in self.job_dir.rglob(f"log-*_{self.id}_*.out"):
            out[int(f.stem.rsplit("_", 1)[1])] = f.read_text(errors="replace")
        return dict(sorted(out.items()))

    def log(self) -> str:
        batch = "".join(f.read_text(errors="replace") for f in self.job_dir.rglob(f"sbatch_*_{self.id}.out"))
        return batch + "".join(self.starts().values())


class World:
    def __init__(self, root: Path, hesnr_prefix: str, cluster):
        self.root, self.cluster = root, cluster
        self.data = root / "hesnr"
        self.data.mkdir()
        src = Path(hesnr_prefix)
        for name in SETS:   # one prepared set under two names
            for f in src.parent.glob(src.name + "_*"):
                os.symlink(f, self.data / f.name.replace(src.name, name, 1))

    def env(self, **extra) -> dict:
        bindir = str(Path(sys.executable).parent)
        return dict(os.environ, **{
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "SLURM_CONF": str(self.cluster.conf),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "NEMORUN_HOME": str(self.root / "nemorun-home"), "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
        }, **extra)

    def script_args(self, run: Path) -> list[str]:
        return ["--bridge", str(BRIDGE_EXAMPLE), *RECIPE,
                "--hesnr-data-path", *(f"{s}={self.data / s}" for s in SETS),
                "--hesnr-jsonl", str(run / "hesnr.jsonl"), "--hesnr-eval-at-start",
                f"checkpoint.save={run / 'ckpt'}", f"checkpoint.load={run / 'ckpt'}"]

    def submit(self, name: str, retries: int = 0, **env) -> tuple[NemoRunJob, Path]:
        """The example, as a user runs it on a login node (detached), under the launch wrapper."""
        run = self.root / name
        run.mkdir()
        job_dir = run / "nemo-run"
        cmd = [sys.executable, str(LAUNCH), "--bridge", str(EXAMPLE), "--executor", "slurm", "--experiment", name,
               "--job-dir", str(job_dir), "--nodes", "2", "--nproc-per-node", "1", "--gpus-per-node", "0",
               "--time", "00:30:00", "--retries", str(retries), "--preempt-time", "60",
               "--rdzv-port", str(free_port()), "--script", str(LAUNCH), "--detach", "--",
               *self.script_args(run)]
        p = subprocess.run(cmd, cwd=run, env=self.env(**env), capture_output=True, text=True, timeout=300)
        (run / "submit.log").write_text(p.stdout + p.stderr)
        assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
        [job_id] = set(re.findall(r"Job id: (\d+)", p.stdout + p.stderr))   # NeMo-Run's status table
        return NemoRunJob(self.cluster, job_id, job_dir), run

    def local_reference(self, jobs: list[list[str]]) -> str:
        out = self.root / "reference"
        out.mkdir()
        (out / "jobs.json").write_text(json.dumps(jobs))
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                            str(LAUNCH), "--bridge", str(REFERENCE), str(out / "jobs.json")], cwd=out, env=self.env(),
                           capture_output=True, text=True, timeout=TIMEOUT)
        TIMES["reference (one process, 3 checkpoints)"] = time.monotonic() - t0
        assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
        return p.stdout + p.stderr


def _finish(job: NemoRunJob, name: str) -> dict:
    return finish(job, name, TIMES, TIMEOUT)


@pytest.fixture(scope="module", autouse=True)
def _report_times(request):
    yield from report_wall_times(request, "[nemo-run]", TIMES)


@pytest.fixture(scope="module")
def world(tmp_path_factory, hesnr_set, slurm_cluster) -> World:  # noqa: F811
    return World(tmp_path_factory.mktemp("nemorun"), hesnr_set, slurm_cluster)   # no "/nemo_run": see the example


@pytest.fixture(scope="module")
def uninterrupted(world):
    job, run = world.submit("uninterrupted")
    info = _finish(job, "uninterrupted (2 nodes, 6 iterations)")
    assert info["JobState"] == "COMPLETED", f"{info}\n{job.log()[-5000:]}"
    return job, run


@pytest.fixture(scope="module")
def preempted(world, slurm_cluster):  # noqa: F811
    probe = world.root / "probe"
    probe.mkdir()
    # retries 4: the test needs 2 requeues; a loaded machine may cost one more (a start lost early)
    # the first start waits after step 4 until the signal has reached Bridge's handler on each rank, so
    # it saves at 4 however slowly the signal travels on a loaded machine
    job, run = world.submit("preempted", retries=4, HESNR_E2E_HOLD_AFTER_START=str(probe),
                            HESNR_E2E_HOLD_FOR_SIGNAL=f"4:{probe}")
    deadline = time.monotonic() + TIMEOUT
    while len(list(probe.glob("signal_wait.*"))) < 2:          # both ranks ran step 4
        assert time.monotonic() < deadline and job.info().get("JobState") not in FINAL, job.log()[-5000:]
        time.sleep(0.5)
    slurm_cluster.run("scancel", "--signal=TERM", job.id)     # what --signal=TERM@60 sends the steps
    hurry_requeued(slurm_cluster, job)
    deadline = time.monotonic() + TIMEOUT
    while len(list(probe.glob("held.*"))) < 2:                # a restart evaluated at start, now held
        assert time.monotonic() < deadline and job.info().get("JobState") not in FINAL, job.log()[-5000:]
        time.sleep(0.5)
    pids = node_pids(slurm_cluster, job.id, "n2")
    assert pids, "no processes of the job on n2"
    (probe / "released").write_text("")                        # the next start trains on
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    hurry_requeued(slurm_cluster, job)
    info = _finish(job, "preempted and requeued twice (3 starts)")
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 2, f"{info}\n{job.log()[-5000:]}"
    return job, run


@pytest.fixture(scope="module")
def resumed_at(preempted) -> int:
    """The iteration restart 0 saved on the signal, loaded by the first restart (the one held after its
    evaluation at start). A later start loads it too, or, when a loaded machine cost one more start
    (a node not responding), a checkpoint saved after it."""
    job, _ = preempted
    loaded = {r: LOADED.findall(text) for r, text in job.starts().items() if r > 0}
    assert all(len(x) <= 1 for x in loaded.values()) and any(loaded.values()), loaded   # a start lost early: 0
    first = int(next(x[0] for r, x in sorted(loaded.items()) if x))
    assert all(int(x[0]) >= first for x in loaded.values() if x), loaded
    return first


def _unplanned(run: Path, resumed_at: int) -> list[int]:
    """Iterations the preempted job recorded beyond the planned ones: a start the test did not plan (a node
    not responding under load requeues the job; Bridge's handler saves where it stands) that evaluated at
    start the checkpoint it loaded, because nothing had recorded it."""
    return sorted({r["iteration"] for r in _records(run / "hesnr.jsonl")} - {0, 3, resumed_at, 6})


@pytest.fixture(scope="module")
def reference(world, uninterrupted, preempted, resumed_at) -> dict:
    """``{(run name, set, step): record}`` of one process evaluating the saved checkpoints."""
    jobs, where = [], {}
    for name, run, step in (("uninterrupted", uninterrupted[1], 3), ("uninterrupted", uninterrupted[1], 6),
                            ("preempted", preempted[1], resumed_at),
                            *(("preempted", preempted[1], it) for it in _unplanned(preempted[1], resumed_at))):
        jsonl = world.root / "reference_records" / f"{name}.{step}.jsonl"
        where[(name, step)] = jsonl
        jobs.append([*RECIPE, "--hesnr-data-path", *(f"{s}={world.data / s}" for s in SETS),
                     "--hesnr-jsonl", str(jsonl), "validation.skip_train=true",
                     f"checkpoint.load={run / 'ckpt'}", f"checkpoint.ckpt_step={step}"])
    world.local_reference(jobs)
    out = {}
    for (name, step), jsonl in where.items():
        for r in _records(jsonl):
            out[(name, r["dataset"], r["iteration"])] = r
        assert sorted(k[1:] for k in out if k[0] == name and k[2] == step) == [(s, step) for s in sorted(SETS)]
    return out


def test_nemo_run_job_script_and_records_on_two_nodes(world, uninterrupted, reference):
    """Item 1: NeMo-Run's job script as submitted; one record per set and evaluation (the start
    included), the line once (the last rank), each equal to one process evaluating the checkpoint."""
    job, run = uninterrupted
    [script] = list(job.job_dir.rglob("*_sbatch.sh"))
    text = script.read_text()
    assert "#SBATCH --signal=TERM@60" in text and "#SBATCH --nodes=2" in text          # PreemptionPlugin
    assert "export TORCHX_MAX_RETRIES=0" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "torchrun" in text and "--nnodes 2" in text and "--nproc-per-node 1" in text
    assert "train.exit_signal_handler=True" in text and "--hesnr-eval-at-start" in text
    log = job.log()
    assert list(job.starts()) == [0]
    recs = _records(run / "hesnr.jsonl")
    assert sorted(_keys(recs)) == sorted((s, it) for s in SETS for it in (0, 3, 6)), _keys(recs)
    for r in recs:
        assert r["writer"]["job_id"] == job.id and r["writer"]["restart"] == 0 and r["run"] == "ckpt"
        assert r["metrics"]["num_tokens"] == 221
        assert r["checkpoint"] == (None if r["iteration"] == 0 else str(run / "ckpt" / f"iter_{r['iteration']:07d}"))
    for s in SETS:
        for it in (0, 3, 6):
            assert log.count(f"validation hesnr-{s} at iteration {it} |") == 1, (s, it)
        for it in (3, 6):
            got = next(r for r in recs if (r["dataset"], r["iteration"]) == (s, it))
            assert_same_state(got, reference[("uninterrupted", s, it)], what=f"{s} {it} vs one process")


def test_preemption_requeue_resumes_and_eval_at_start_is_not_repeated(world, uninterrupted, preempted, resumed_at,
                                                                      reference):
    """Items 2 and 3: the signal -> Bridge saves and exits -> NeMo-Run's requeue -> resume from its
    own checkpoint, evaluated at start once (equal to the skip-train evaluation of that checkpoint),
    not again after the second requeue; every record equal to the uninterrupted run's."""
    job, run = preempted
    starts = job.starts()
    last = max(starts)
    assert "exiting program after receiving SIGTERM" in starts[0]
    assert resumed_at in (4, 5)
    assert (run / "ckpt" / f"iter_{resumed_at:07d}").is_dir()
    recs = _records(run / "hesnr.jsonl")
    by_key = {(r["dataset"], r["iteration"]): r["writer"]["restart"] for r in recs}
    assert len(by_key) == len(recs), sorted(_keys(recs))                        # none repeated
    unplanned = _unplanned(run, resumed_at)
    assert sorted(by_key) == sorted((s, it) for s in SETS for it in (0, 3, resumed_at, 6, *unplanned))
    assert {by_key[(s, it)] for s in SETS for it in (0, 3)} == {0}
    held = by_key[(SETS[0], resumed_at)]                 # the start that evaluated the checkpoint, then held
    assert held >= 1 and {by_key[(s, resumed_at)] for s in SETS} == {held}
    trained = by_key[(SETS[0], 6)]                        # the start that trained to the end
    assert {by_key[(s, 6)] for s in SETS} == {trained} and trained > held
    # Every start after the held one evaluated at start only weights nothing had recorded: the start after
    # the kill resumed from the held start's checkpoint and said so; a start the test did not plan (a node
    # lost to the load) evaluated the checkpoint it loaded only if no start had recorded it.
    said = "HE-SNR at start: gym, swe already recorded at iteration {} of run ckpt"
    assert LOADED.findall(starts[held + 1]) == [str(resumed_at)] and said.format(resumed_at) in starts[held + 1]
    for r in range(held + 1, last + 1):
        loaded = LOADED.findall(starts[r])
        if not loaded:
            continue   # a start lost before it loaded a checkpoint
        it = int(loaded[0])
        if by_key.get((SETS[0], it)) == r:   # the first start to hold these weights: its records
            assert it in unplanned and {by_key[(s, it)] for s in SETS} == {r}, (r, it)
        else:
            assert said.format(it) in starts[r], (r, it)
    ref = {(r["dataset"], r["iteration"]): r for r in _records(uninterrupted[1] / "hesnr.jsonl")}
    for r in recs:
        what = f"{r['dataset']} {r['iteration']} restart {r['writer']['restart']}"
        if r["iteration"] in (resumed_at, *unplanned):   # a start evaluation of resumed weights
            assert r["checkpoint"] == str(run / "ckpt" / f"iter_{r['iteration']:07d}")
            assert_same_state(r, reference[("preempted", r["dataset"], r["iteration"])], what=what + " vs skip-train")
        else:
            assert_same_state(r, ref[(r["dataset"], r["iteration"])], what=what + " vs uninterrupted")
