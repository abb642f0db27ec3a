"""The example sbatch scripts, unchanged, on a real two-node Slurm cluster (CPU scale).

``examples/launch/moe_midtrain_32k_hesnr.sbatch`` and ``checkpoint_sweep_hesnr.sbatch`` are
submitted as users do: ``sbatch [options] SCRIPT [megatron args...]`` with ``GPUS_PER_NODE=1``,
the appended arguments shrinking the script's MoE to a tiny one (2 layers, 4 experts, top-2,
hidden 64, sequence 128, bf16 as the script asks) and choosing ``--transformer-impl local
--distributed-backend gloo``. The training data and the two HE-SNR sets (``swe_verified``,
``swe_gym``) are the prepared real trajectories. The CPU shim reaches the processes torchrun
starts only through a ``sitecustomize.py`` in a test folder on the jobs' ``PYTHONPATH``.

Jobs (module-scoped, shared between assertions): a base checkpoint (one local process, the
script's ``--pretrained-checkpoint``); the training job on 2 nodes x 1 process, once with data
parallel 2 (experts replicated) and once with expert parallel 2 (the script's alltoall
dispatcher over gloo), each against a one-process ``--load --skip-train`` reference; the
checkpoint sweep; one job requeued twice (between evaluations through the script's time-limit
trap, then by ``scontrol requeue`` while the HE-SNR evaluation runs, with a KillWait shorter
than it); and one job that loses a node's processes and is resubmitted. Every record of a
resumed or resubmitted job equals the uninterrupted run's to 1e-5 (the CPU shim restores torch
Adam's step as a GPU run does: ``megatron_cpu_shim._resume_torch_adam``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("megatron.training")

from conftest import REPO  # noqa: E402
from slurm_fixtures import (  # noqa: E402,F401
    Job, finish, free_port as _free_port, hurry_requeued, node_pids, read_records as _records, report_wall_times,
    slurm_cluster)
from test_megatron_e2e import assert_same_state, checkout  # noqa: E402,F401  (hesnr_set: conftest)

LAUNCH = REPO / "examples" / "launch"
TRAIN_SBATCH = LAUNCH / "moe_midtrain_32k_hesnr.sbatch"
SWEEP_SBATCH = LAUNCH / "checkpoint_sweep_hesnr.sbatch"
SETS = ("swe_verified", "swe_gym")
JOB_TIMEOUT = 420
TIMES: dict[str, float] = {}

TINY = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128", "--num-attention-heads", "4",
    "--num-query-groups", "2", "--kv-channels", "16", "--seq-length", "128", "--max-position-embeddings", "128",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "129280",
    "--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
    "--tensor-model-parallel-size", "1", "--context-parallel-size", "1", "--expert-model-parallel-size", "1",
    "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "6", "--eval-interval", "3",
    "--eval-iters", "1", "--save-interval", "3", "--lr", "1e-3", "--lr-warmup-iters", "0", "--seed", "1234",
    "--log-interval", "1", "--use-cpu-initialization", "--split", "50,50,0",
    "--no-create-attention-mask-in-dataloader", "--wandb-project", "",
    "--transformer-impl", "local", "--distributed-backend", "gloo", "--no-gradient-accumulation-fusion",
    "--no-persist-layer-norm", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-dropout-fusion",
    "--no-rope-fusion", "--hesnr-window-stride", "64",
]
ITER = re.compile(r"\] iteration +(\d+)/ +6 \|")
LOADED = re.compile(r"successfully loaded checkpoint from (\S+) .*? at iteration (\d+)")


def _by_key(records: list[dict]) -> dict:
    """The last record of each (set, iteration), in file order."""
    return {(r["dataset"], r["iteration"]): r for r in records}


class World:
    """What every launch shares: the Megatron checkout, data, test site folder, environment."""

    def __init__(self, root: Path, checkout: Path, hesnr_prefix: str):
        self.root = root
        self.hesnr_dir = root / "hesnr"
        self.hesnr_dir.mkdir()
        src = Path(hesnr_prefix)
        for name in SETS:   # both sets are the prepared trajectories under the scripts' set names
            for f in src.parent.glob(src.name + "_*"):
                os.symlink(f, self.hesnr_dir / f.name.replace(src.name, name, 1))
        self.site = root / "site"
        self.site.mkdir()
        shutil.copy(REPO / "tests" / "slurm_sitecustomize.py", self.site / "sitecustomize.py")
        self.checkout = checkout
        self.base = root / "base"

    def env(self, ckpt: Path, **extra) -> dict:
        bindir = str(Path(sys.executable).parent)   # torchrun and python of this interpreter
        return dict(os.environ, **{
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join([str(self.site), str(REPO), os.environ.get("PYTHONPATH", "")]),
            "HESNR_TEST_TESTS_DIR": str(REPO / "tests"), "MEGATRON_LM_DIR": str(self.checkout),
            "MEGATRON_HESNR_DIR": str(REPO), "HESNR_DIR": str(self.hesnr_dir),
            "DATA_PATH": str(self.hesnr_dir / "swe_verified_tokens"), "CHECKPOINT_PATH": str(ckpt),
            "BASE_CHECKPOINT": str(self.base), "GPUS_PER_NODE": "1", "MASTER_PORT": str(_free_port()),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
        }, **extra)

    def script_argv(self, ckpt: Path, args: list[str]) -> list[str]:
        """The Megatron arguments moe_midtrain_32k_hesnr.sh gives torchrun (torchrun stubbed)."""
        out = self.root / f"argv.{time.monotonic_ns()}"
        stub = 'torchrun() { printf "%s\\0" "$@" > "$ARGV_OUT"; }; export -f torchrun; bash "$@"'
        p = subprocess.run(["bash", "-c", stub, "x", str(LAUNCH / "moe_midtrain_32k_hesnr.sh"), *args],
                           env=self.env(ckpt, ARGV_OUT=str(out)), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        words = out.read_bytes().decode().split("\0")[:-1]
        return words[words.index(next(w for w in words if w.endswith(".py"))):]

    def local(self, name: str, ckpt: Path, argv: list[str]) -> str:
        """One process, torchrun --standalone, outside Slurm; returns the log."""
        out = self.root / name
        out.mkdir()
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                            *argv], cwd=out, env=self.env(ckpt), capture_output=True, text=True, timeout=JOB_TIMEOUT)
        TIMES[f"local {name}"] = time.monotonic() - t0
        log = p.stdout + p.stderr
        (out / "log").write_text(log)
        assert p.returncode == 0, f"{name}: rc {p.returncode}; log tail:\n{log[-5000:]}"
        return log

    def submit(self, cluster, name: str, script: Path, ckpt: Path, args: list[str], sbatch_opts=(), **env) -> Job:
        return Job(cluster, self.root / name, script, ["--nodes=2", *sbatch_opts], args, self.env(ckpt, **env))


def _finish(job: Job, name: str, timeout: float = JOB_TIMEOUT) -> dict:
    return finish(job, name, TIMES, timeout)


@pytest.fixture(scope="module", autouse=True)
def _report_times(request):
    yield from report_wall_times(request, "[slurm]", TIMES)


@pytest.fixture(scope="module")
def world(tmp_path_factory, checkout, hesnr_set, slurm_cluster) -> World:  # noqa: F811
    w = World(tmp_path_factory.mktemp("slurm_world"), checkout, hesnr_set)
    # The base weights the script's --pretrained-checkpoint names: one step of the same model.
    argv = w.script_argv(w.base, [*TINY, "--train-iters", "1", "--save-interval", "1"])
    i = argv.index("--pretrained-checkpoint")
    del argv[i:i + 2]
    w.local("base_train", w.base, argv)
    assert (w.base / "iter_0000001").is_dir()
    return w


@pytest.fixture(scope="module")
def trained(world, slurm_cluster):  # noqa: F811
    """Item 1: the training script on 2 nodes x 1 process: data parallel 2 (the MoE's experts
    replicated; expert parallel 2 fails on the CPU, see the module docstring)."""
    ckpt = world.root / "run_a"
    job = world.submit(slurm_cluster, "train_a", TRAIN_SBATCH, ckpt, TINY)
    info = _finish(job, "train (2 nodes, DP 2, 6 iterations)")
    assert info["JobState"] == "COMPLETED", f"{info}\n{job.log()[-5000:]}"
    return ckpt, job


def _check_training_job(world, ckpt: Path, job: Job, ref_name: str, base_reference: dict) -> None:
    """Item 1: records at each evaluation, the line on the last rank only, and the metrics of
    step 6 equal to one process (EP 1) loading the saved step with ``--skip-train``; the script's
    ``--hesnr-eval-at-start`` record of the base weights (iteration 0) equal to one process
    evaluating the base checkpoint with ``--skip-train``."""
    log = job.log()
    assert "attempting to finetune with checkpoint in " + str(world.base) in log   # first start: base weights
    recs = _records(ckpt / "hesnr.jsonl")
    assert sorted(_by_key(recs)) == sorted((s, it) for s in SETS for it in (0, 3, 6)) and len(recs) == 6
    for r in recs:
        assert r["writer"]["job_id"] == job.id and r["writer"]["restart"] == 0 and r["metrics"]["num_tokens"] == 221
        assert r["checkpoint"] == (str(world.base) if r["iteration"] == 0 else str(ckpt / f"iter_{r['iteration']:07d}"))
    for s in SETS:
        for it in (0, 3, 6):   # the line once per set and evaluation: the last rank only
            assert log.count(f"validation hesnr-{s} at iteration {it} |") == 1, (s, it)
        assert_same_state(_by_key(recs)[(s, 0)], base_reference[s], what=f"{s}: at start vs --skip-train of the base")
    ref_dir = world.root / ref_name
    argv = world.script_argv(ckpt, [*TINY, "--skip-train", "--no-load-optim", "--no-load-rng",
                                    "--hesnr-jsonl", str(ref_dir / "hesnr.jsonl"),
                                    "--tensorboard-dir", str(ref_dir / "tb")])
    world.local(ref_name, ckpt, argv)
    ref = _by_key(_records(ref_dir / "hesnr.jsonl"))
    assert sorted(ref) == [(s, 6) for s in sorted(SETS)]   # --hesnr-eval-at-start does nothing under --skip-train
    for key, r in ref.items():
        assert r["checkpoint"] == str(ckpt / "iter_0000006")
        assert_same_state(_by_key(recs)[key], r, what=f"train vs --skip-train {key}")


@pytest.fixture(scope="module")
def base_reference(world) -> dict:
    """``{set: record}``: one process evaluating the base checkpoint (its step 1) with ``--skip-train``."""
    out = world.root / "ref_base"
    argv = world.script_argv(world.base, [*TINY, "--skip-train", "--no-load-optim", "--no-load-rng",
                                          "--hesnr-jsonl", str(out / "hesnr.jsonl"), "--tensorboard-dir", str(out / "tb")])
    world.local("ref_base", world.base, argv)
    recs = _records(out / "hesnr.jsonl")
    assert sorted(_by_key(recs)) == [(s, 1) for s in sorted(SETS)]
    return {r["dataset"]: r for r in recs}


def test_training_script_records_and_reference(world, trained, base_reference):
    ckpt, job = trained
    _check_training_job(world, ckpt, job, "ref", base_reference)


@pytest.fixture(scope="module")
def trained_ep2(world, slurm_cluster):  # noqa: F811
    """Item 1, second case: the same MoE with expert parallel 2 on 2 nodes x 1 process (each node
    holds two of the four experts; the alltoall dispatcher moves tokens between the nodes)."""
    ckpt = world.root / "run_ep2"
    job = world.submit(slurm_cluster, "train_ep2", TRAIN_SBATCH, ckpt, [*TINY, "--expert-model-parallel-size", "2"])
    info = _finish(job, "train (2 nodes, EP 2, 6 iterations)")
    assert info["JobState"] == "COMPLETED", f"{info}\n{job.log()[-5000:]}"
    return ckpt, job


def test_training_script_with_expert_parallel_2(world, trained_ep2, base_reference):
    ckpt, job = trained_ep2
    assert re.search(r"expert_model_parallel_size \.+ 2\n", job.log()), "the job did not run EP 2"
    _check_training_job(world, ckpt, job, "ref_ep2", base_reference)


@pytest.fixture(scope="module")
def sweep(world, trained, slurm_cluster):  # noqa: F811
    ckpt, _ = trained
    out = world.root / "sweep_out" / "hesnr_sweep.jsonl"
    job = world.submit(slurm_cluster, "sweep", SWEEP_SBATCH, ckpt, TINY, STEPS="3 6", OUT=str(out))
    info = _finish(job, "checkpoint sweep (2 nodes, steps 3 6)")
    assert info["JobState"] == "COMPLETED", f"{info}\n{job.log()[-5000:]}"
    return out, job


def test_checkpoint_sweep_equals_training_records(trained, sweep):
    ckpt, _ = trained
    out, job = sweep
    recs = _records(out)
    assert len(recs) == 4 and sorted(_by_key(recs)) == sorted((s, it) for s in SETS for it in (3, 6))
    train = _by_key(_records(ckpt / "hesnr.jsonl"))
    for key, r in _by_key(recs).items():
        assert r["run"] == train[key]["run"] == "run_a" and r["checkpoint"] == train[key]["checkpoint"]
        assert_same_state(r, train[key], what=f"sweep vs training {key}")
    assert f"records: 4 in {out}" in job.log()


def _compare_with_uninterrupted(records: list[dict], run_dir: Path) -> None:
    """Every record, before and after a resume, equals the uninterrupted run's: the whole
    accumulator state to 1e-5 relative."""
    uninterrupted = _by_key(_records(run_dir / "hesnr.jsonl"))
    for r in records:
        ref = uninterrupted[(r["dataset"], r["iteration"])]
        what = f"{r['dataset']} {r['iteration']} job {r['writer']['job_id']} restart {r['writer']['restart']}"
        assert_same_state(r, ref, what=what + " vs uninterrupted")


def _hesnr(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "megatron_hesnr.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180)


def _report_counts(jsonl: Path, out: Path, dataset: str) -> tuple[dict, str]:
    p = _hesnr("report", str(jsonl), "--dataset", dataset, "--output-dir", str(out), "--no-figures",
               "--bootstrap", "0")
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads((out / "summary.json").read_text()), p.stdout + p.stderr


def _batch_shell_pid(cluster, job_id: str) -> int:
    """The PID of the job's batch shell (slurmd runs ``.../job<id>/slurm_script``) in ``cluster``
    (its environment names the cluster's ``SLURM_CONF``)."""
    mark = f"job{int(job_id):05d}/slurm_script"
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if mark in (d / "cmdline").read_bytes().decode(errors="replace") and \
                        f"SLURM_CONF={cluster.conf}\0".encode() in (d / "environ").read_bytes() + b"\0":
                    return int(d.name)
            except OSError:
                pass
    raise AssertionError(f"no batch shell of job {job_id}")


@pytest.fixture(scope="module")
def requeued(world, trained, slurm_cluster):  # noqa: F811
    """Item 3, one job, three starts.
    (a) between evaluations: after iteration 4 the batch shell gets SIGUSR1, what
        ``--signal=B:USR1@600`` sends before the time limit: the script's trap has Megatron save
        and exit (SIGURG), then ``scontrol requeue``s the job (restart 0 -> 1);
    (b) during the HE-SNR evaluation at iteration 6, after its records are written, the test
        runs ``scontrol requeue`` with KillWait 2 s (shorter than the evaluation): the SIGTERM
        ends Megatron before the step-6 checkpoint (restart 1 -> 2), which evaluates 6 again."""
    ckpt = world.root / "run_r"
    probe = world.root / "probe"
    probe.mkdir()
    job = world.submit(slurm_cluster, "requeue", TRAIN_SBATCH, ckpt, TINY,
                       HESNR_E2E_SLOW_PASS=f"6:300:{probe}:1")
    job.wait_for(ITER, JOB_TIMEOUT, count=4)                 # restart 0 reached iteration 4
    os.kill(_batch_shell_pid(slurm_cluster, job.id), signal.SIGUSR1)
    hurry_requeued(slurm_cluster, job)
    job.wait_for("job " + job.id + " restart 1", JOB_TIMEOUT)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not list(probe.glob("pass-started.*")):
        assert time.monotonic() < deadline and job.info().get("JobState") not in ("COMPLETED", "FAILED"), \
            job.log()[-5000:]
        time.sleep(0.5)
    slurm_cluster.set_kill_wait(2)
    try:
        slurm_cluster.run("scontrol", "requeue", job.id)
        hurry_requeued(slurm_cluster, job)
        job.wait_for("job " + job.id + " restart 2", JOB_TIMEOUT)
    finally:
        slurm_cluster.set_kill_wait(20)
    info = _finish(job, "requeued twice (3 starts)")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", f"{info}\n{job.log()[-5000:]}"
    return ckpt, job


def test_requeue_resumes_from_own_checkpoint_and_counts_each_iteration_once(world, trained, requeued, tmp_path):
    ckpt, job = requeued
    log = job.log()
    starts = log.split("job " + job.id + " restart ")
    assert len(starts) == 4, "one output file, appended by the three starts"
    # restart 0 starts from the base weights; restarts 1 and 2 from this run's own checkpoints
    assert "attempting to finetune with checkpoint in " + str(world.base) in starts[1]
    assert "time limit near" in starts[1] and "exiting program after receiving SIGTERM" in starts[1]
    saved = [int(x) for x in re.findall(r"successfully saved checkpoint from iteration +(\d+)", starts[1])]
    assert saved[-1] in (4, 5), saved            # the checkpoint saved on the signal
    for text in starts[2:]:
        assert "attempting to finetune" not in text
        [(where, it)] = LOADED.findall(text)
        assert where == str(ckpt) and int(it) == saved[-1], (where, it)   # the SIGKILL/TERM saved nothing newer
    assert "exiting program after receiving" not in starts[2]  # ended inside the evaluation
    raw = _records(ckpt / "hesnr.jsonl")
    # iteration 6 was evaluated twice (restart 1 wrote its records and was ended before its
    # checkpoint; restart 2 evaluated it again); iteration 3 once; --hesnr-eval-at-start: the base
    # weights at 0 by restart 0, the checkpoint of the signal by restart 1 and not again by restart 2
    k = saved[-1]
    assert sorted((r["dataset"], r["iteration"], r["writer"]["restart"]) for r in raw) == sorted(
        [(s, it, 0) for s in SETS for it in (0, 3)] + [(s, k, 1) for s in SETS] + [(s, 6, 1) for s in SETS]
        + [(s, 6, 2) for s in SETS])
    assert f"HE-SNR at start: swe_gym, swe_verified already recorded at iteration {k} of run run_r" in starts[3]
    assert all(r["writer"]["job_id"] == job.id for r in raw)
    _compare_with_uninterrupted([r for r in raw if r["iteration"] != k], trained[0])
    # the record at start equals one process evaluating that checkpoint with --skip-train
    ref_dir = world.root / "ref_requeue"
    world.local("ref_requeue", ckpt, world.script_argv(ckpt, [
        *TINY, "--skip-train", "--no-load-optim", "--no-load-rng", "--ckpt-step", str(k),
        "--hesnr-jsonl", str(ref_dir / "hesnr.jsonl"), "--tensorboard-dir", str(ref_dir / "tb")]))
    ref = _by_key(_records(ref_dir / "hesnr.jsonl"))
    assert sorted(ref) == [(s, k) for s in sorted(SETS)]
    for r in raw:
        if r["iteration"] == k:
            assert r["checkpoint"] == ref[(r["dataset"], k)]["checkpoint"] == str(ckpt / f"iter_{k:07d}")
            assert_same_state(r, ref[(r["dataset"], k)], what=f"{r['dataset']} {k}: at start vs --skip-train")
    for s in SETS:   # the iteration evaluated twice: both starts resumed from the same checkpoint
        twice = [r for r in raw if (r["dataset"], r["iteration"]) == (s, 6)]
        assert_same_state(twice[0], twice[1], what=f"{s} 6: restart 1 vs restart 2")
    for s in SETS:
        summary, text = _report_counts(ckpt / "hesnr.jsonl", tmp_path / f"report_{s}", s)
        assert summary["input"]["set_aside"] == 2 and "set aside 2 record(s)" in text, text
        assert summary["input"]["records"] == 4 and not summary["input"]["torn_lines"]
        assert sorted(row["iteration"] for row in summary["checkpoints"]) == [0, 3, k, 6]
    p = _hesnr("compare", str(ckpt / "hesnr.jsonl"), "--a", "3", "--b", "6", "--dataset", "swe_verified",
               "--bootstrap", "10", "--json", str(tmp_path / "cmp.json"))
    assert p.returncode == 0, p.stdout + p.stderr
    # compare reads one set (--dataset): its one re-evaluated record is set aside
    assert "set aside 1 record(s)" in p.stderr and json.loads((tmp_path / "cmp.json").read_text())["set_aside"] == 1


@pytest.fixture(scope="module")
def node_lost(world, trained, slurm_cluster):  # noqa: F811
    """Item 4: n2's processes of the job are killed after iteration 4; then the script is resubmitted."""
    ckpt = world.root / "run_n"
    job = world.submit(slurm_cluster, "node_lost", TRAIN_SBATCH, ckpt, TINY)
    job.wait_for(ITER, JOB_TIMEOUT, count=4)
    pids = node_pids(slurm_cluster, job.id, "n2")
    assert pids, "no processes of the job on n2"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    info = _finish(job, "node lost")
    again = world.submit(slurm_cluster, "node_lost_again", TRAIN_SBATCH, ckpt, TINY)
    info2 = _finish(again, "resubmitted after node loss")
    return ckpt, job, info, again, info2


def test_node_lost_fails_clearly_and_resubmission_continues(trained, node_lost, tmp_path):
    ckpt, job, info, again, info2 = node_lost
    assert info["JobState"] == "FAILED", info
    log = job.log()
    assert re.search(r"srun: error: n2: task 1: Killed", log), log[-3000:]
    assert "a process or node of the job was lost" in log, log[-3000:]
    assert info2["JobState"] == "COMPLETED", f"{info2}\n{again.log()[-5000:]}"
    [(where, it)] = LOADED.findall(again.log())
    assert where == str(ckpt) and it == "3"                      # the last checkpoint the failed job saved
    recs = _records(ckpt / "hesnr.jsonl")                        # readable: every line whole
    # the resubmitted job starts from checkpoint 3, whose records the failed job wrote: not again
    assert sorted((r["dataset"], r["iteration"], r["writer"]["job_id"]) for r in recs) == sorted(
        [(s, it, job.id) for s in SETS for it in (0, 3)] + [(s, 6, again.id) for s in SETS])
    assert "HE-SNR at start: swe_gym, swe_verified already recorded at iteration 3 of run run_n" in again.log()
    _compare_with_uninterrupted(recs, trained[0])
    summary, _ = _report_counts(ckpt / "hesnr.jsonl", tmp_path / "report", "swe_verified")
    assert summary["input"]["set_aside"] == 0 and not summary["input"]["torn_lines"]
    assert sorted(row["iteration"] for row in summary["checkpoints"]) == [0, 3, 6]
