"""``#SBATCH --gpus-per-node=8`` of the example scripts on a cluster whose nodes declare no GPUs.

Slurm rejects such a job at submission ("Requested node configuration is not available"); the
option given again on the ``sbatch`` command line, ``--gpus-per-node=0``, overrides the script's
and the job is accepted. (``--gres=none`` and ``--gres=gpu:0`` do not override it: the
script's ``--gpus-per-node`` still asks for eight.) ``sbatch --test-only`` asks the scheduler
without submitting; one real job shows the override runs.

Like ``test_slurm_launch.py`` this module runs in the Python 3.12 CI leg only (the one with
``megatron.training``): two legs side by side must not both install Slurm or edit
``/etc/hosts``.
"""
from __future__ import annotations

import pytest

pytest.importorskip("megatron.training")

from conftest import REPO  # noqa: E402
from slurm_fixtures import slurm_cluster_without_gpus  # noqa: E402,F401

SCRIPTS = [REPO / "examples" / "launch" / n for n in
           ("moe_midtrain_32k_hesnr.sbatch", "checkpoint_sweep_hesnr.sbatch", "context_extension_128k_cp.sbatch")]


def _sbatch(cluster, *args):
    import subprocess

    return subprocess.run(["sbatch", *args], env=cluster.env(), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_gpus_per_node_on_the_command_line_overrides_the_script(slurm_cluster_without_gpus, script):  # noqa: F811
    c = slurm_cluster_without_gpus
    assert "#SBATCH --gpus-per-node=8" in script.read_text()
    as_written = _sbatch(c, "--test-only", "--nodes=2", str(script))
    assert as_written.returncode != 0 and "Requested node configuration is not available" in as_written.stderr, \
        as_written.stdout + as_written.stderr
    for other in ("--gres=none", "--gres=gpu:0"):
        p = _sbatch(c, "--test-only", "--nodes=2", other, str(script))
        assert p.returncode != 0, (other, p.stdout + p.stderr)
    overridden = _sbatch(c, "--test-only", "--nodes=2", "--gpus-per-node=0", str(script))
    assert overridden.returncode == 0 and "to start at" in overridden.stdout + overridden.stderr, \
        overridden.stdout + overridden.stderr


def test_overridden_job_runs_on_both_nodes(slurm_cluster_without_gpus, tmp_path):  # noqa: F811
    c = slurm_cluster_without_gpus
    script = tmp_path / "probe.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=8\n"
                      "srun bash -c 'echo node=$SLURMD_NODENAME'\n")
    p = _sbatch(c, "--parsable", "--wait", "--nodes=2", "--gpus-per-node=0", f"--output={tmp_path}/out-%j",
                str(script))
    assert p.returncode == 0, p.stdout + p.stderr
    out = (tmp_path / f"out-{p.stdout.strip().split(';')[0]}").read_text()
    assert sorted(x for x in out.split() if x.startswith("node=")) == ["node=n1", "node=n2"], out
