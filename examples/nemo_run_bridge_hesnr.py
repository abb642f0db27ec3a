#!/usr/bin/env python
"""Launch the Megatron-Bridge recipe with HE-SNR (``bridge_pretrain_hesnr.py``) through NeMo-Run.

On a Slurm cluster, from a login node (``run.LocalTunnel``: this machine submits with ``sbatch``):

    python examples/nemo_run_bridge_hesnr.py --executor slurm --account ACCT --partition batch \\
        --nodes 4 --nproc-per-node 8 --time 04:00:00 --retries 3 --preempt-time 300 \\
        --job-dir /lustre/$USER/nemo-run --experiment qwen3-mid --detach -- \\
        --recipe qwen3_30b_a3b_pretrain_config \\
        --hesnr-data-path swe=/data/hesnr/swe_verified --hesnr-jsonl /runs/qwen3-mid/hesnr.jsonl \\
        --hesnr-eval-at-start \\
        checkpoint.save=/runs/qwen3-mid/ckpt checkpoint.load=/runs/qwen3-mid/ckpt \\
        validation.eval_interval=500 validation.eval_iters=10

On one machine: ``--executor local --nproc-per-node 8 -- <the same script arguments>``.

Everything after ``--`` goes to the training script unchanged: the recipe, Bridge's
``section.field=value`` overrides and the ``--hesnr-*`` settings. The task is a
``run.Script`` started by NeMo-Run's torchrun launcher (``--nproc-per-node`` processes on
each of ``--nodes`` nodes). With ``--preempt-time S`` (default 60; 0: off) Megatron-Bridge's
``PreemptionPlugin`` asks Slurm for a SIGTERM S seconds before the time limit and turns on
Bridge's exit handler (``train.exit_signal_handler=True``): Bridge saves a checkpoint and
exits, and NeMo-Run's job script requeues the job while ``--retries`` exceeds
``SLURM_RESTART_COUNT`` (a start that ends with a non-zero exit; ``sbatch --requeue``).
For the requeued job to resume, give ``checkpoint.load`` the directory of ``checkpoint.save``;
``--hesnr-eval-at-start`` then evaluates the checkpoint it resumes from, unless its records
file already holds it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("bridge_pretrain_hesnr.py")


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- go to the training script (recipe, overrides, --hesnr-*).")
    p.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    p.add_argument("--experiment", default="bridge-hesnr", help="NeMo-Run experiment title")
    p.add_argument("--script", default=str(SCRIPT), help="training script (default: %(default)s)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--nproc-per-node", type=int, default=8, help="processes per node (one per GPU)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs asked of Slurm per node (default: --nproc-per-node; 0: none)")
    p.add_argument("--time", default="04:00:00", help="Slurm time limit")
    p.add_argument("--retries", type=int, default=3, help="times NeMo-Run's job script requeues a failed start")
    p.add_argument("--preempt-time", type=int, default=60,
                   help="SIGTERM this many seconds before the time limit, Bridge saves and exits (0: off)")
    p.add_argument("--account", default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--job-dir", default=None,
                   help="NeMo-Run's folder (experiments/<title>/<id>: job script, logs); Slurm: one the nodes see "
                        "(default for --executor local: NeMo-Run's home, $NEMORUN_HOME or ~/.nemo_run)")
    p.add_argument("--container-image", default=None)
    p.add_argument("--container-mounts", nargs="*", default=[])
    p.add_argument("--rdzv-port", type=int, default=29500, help="torchrun rendezvous port on the first node")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="environment of the job")
    p.add_argument("--detach", action="store_true", help="submit and return (Slurm)")
    p.add_argument("--dryrun", action="store_true", help="print the job script, submit nothing")
    args = p.parse_args(argv)
    if not script_args:
        p.error("no training script arguments: put them after -- (at least --recipe and the --hesnr-* flags)")
    for name in ("nodes", "nproc_per_node", "retries", "preempt_time"):
        if getattr(args, name) < (1 if name in ("nodes", "nproc_per_node") else 0):
            p.error(f"--{name.replace('_', '-')} must be >= {1 if name in ('nodes', 'nproc_per_node') else 0}")
    bad = [e for e in args.env if "=" not in e]
    if bad:
        p.error(f"--env takes KEY=VALUE, got {bad}")
    if args.executor == "slurm" and not args.job_dir:
        p.error("--executor slurm needs --job-dir (a folder the nodes see)")
    if args.job_dir and "/nemo_run" in os.path.abspath(args.job_dir):
        # NeMo-Run replaces every "/nemo_run" (its container's run folder) in a job script it writes
        # for a run without a container by the job folder: such a path would be mangled.
        p.error(f"--job-dir {args.job_dir}: NeMo-Run rewrites '/nemo_run' in its job scripts; choose a "
                "path without it (e.g. nemo-run)")
    return args, script_args


def slurm_executor(args, run):
    gpus = args.nproc_per_node if args.gpus_per_node is None else args.gpus_per_node
    return run.SlurmExecutor(
        account=args.account, job_name_prefix="hesnr.", partition=args.partition, nodes=args.nodes,
        ntasks_per_node=args.nproc_per_node, gpus_per_node=gpus or None, time=args.time,
        # LocalTunnel: this machine submits; the job reads the experiment folder NeMo-Run writes here
        tunnel=run.LocalTunnel(job_dir=os.path.join(args.job_dir, "experiments")), packager=run.Packager(),
        launcher=run.Torchrun(rdzv_port=args.rdzv_port), retries=args.retries,
        container_image=args.container_image, container_mounts=list(args.container_mounts),
        env_vars=dict(e.split("=", 1) for e in args.env),
    )


def local_executor(args, run):
    return run.LocalExecutor(ntasks_per_node=args.nproc_per_node, launcher=run.Torchrun(rdzv_port=args.rdzv_port),
                             env_vars=dict(e.split("=", 1) for e in args.env))


def main(argv=None) -> None:
    args, script_args = parse_args(argv)
    import nemo_run as run
    from megatron.bridge.recipes.run_plugins import PreemptionPlugin

    script = run.Script(path=os.path.abspath(args.script), args=script_args, entrypoint="python")
    executor = slurm_executor(args, run) if args.executor == "slurm" else local_executor(args, run)
    plugins = [PreemptionPlugin(preempt_time=args.preempt_time)] if args.preempt_time else []
    with run.Experiment(args.experiment, executor=executor, base_dir=args.job_dir) as exp:
        exp.add(script, executor=executor, plugins=plugins, name=args.experiment, tail_logs=False)
        if args.dryrun:
            exp.dryrun()
        else:
            exp.run(detach=args.detach)


if __name__ == "__main__":
    main()
