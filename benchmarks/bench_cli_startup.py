"""Start-up time of the data commands: `hesnr prepare --help`, `hesnr inspect P` (a small prepared
set) and `hesnr score` (no arguments: up to its first argument error), each run ``--repeats`` times
(default 5) in a fresh interpreter; prints the median wall seconds of each.

Side by side, in the same run:

- ``python -c pass``: the interpreter's own start, which no command can go below;
- ``import megatron.core.datasets.indexed_dataset``: what `hesnr prepare` and `hesnr inspect`
  paid before the indexed files were read and written without megatron-core (torch and
  megatron-core's import), when megatron-core is installed;
- with ``--compare-with DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/old
  fc44053``): the same three commands from that checkout, and the ratio old / new per command.

Goal (issue 34): every command under 1 s (median of 5) and no Transformer Engine / Apex warning,
with or without ``-v``: the script counts such lines in the commands' output. Run:
``python benchmarks/bench_cli_startup.py [--compare-with DIR]``; ``--quick`` checks that it runs
(one repeat). The set is prepared here (the demo's trajectories, a 300-token BPE trained on them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO_TRAJECTORIES = REPO / "megatron_hesnr" / "assets" / "demo" / "trajectories.jsonl"
GOAL_S = 1.0
WARNING_WORDS = ("Transformer Engine", "Apex")


def prepare_set(folder: Path) -> str:
    """A small prepared set (36 trajectories) and the tokenizer it was made with."""
    import json

    from megatron_hesnr.demo.bpe import train_bpe

    texts = [json.dumps(json.loads(line)) for line in DEMO_TRAJECTORIES.read_text(encoding="utf-8").splitlines()]
    tok = train_bpe(texts, 300, folder / "tokenizer.json")
    prefix = folder / "demo"
    subprocess.run([sys.executable, "-m", "megatron_hesnr.cli", "prepare", str(DEMO_TRAJECTORIES), "--tokenizer",
                    str(tok), "--output-prefix", str(prefix), "--no-progress"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return str(prefix)


def timed(argv: list[str], root: Path | None, repeats: int, cwd: str) -> tuple[float, int, int]:
    """(median seconds, exit status of the last run, output lines naming Transformer Engine / Apex)."""
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = str(root)
    times, rc, warned = [], 0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
        times.append(time.perf_counter() - t0)
        rc = proc.returncode
        warned += sum(any(w in ln for w in WARNING_WORDS) for ln in (proc.stdout + proc.stderr).splitlines())
    return statistics.median(times), rc, warned


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compare-with", metavar="DIR", help="an earlier checkout: its commands timed beside these")
    ap.add_argument("--quick", action="store_true", help="check that it runs, not a measurement: --repeats 1")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    old = Path(args.compare_with).resolve() if args.compare_with else None

    with tempfile.TemporaryDirectory() as tmp:
        prefix = prepare_set(Path(tmp))
        commands = {
            "hesnr prepare --help": ["prepare", "--help"],
            "hesnr -v prepare --help": ["-v", "prepare", "--help"],
            "hesnr inspect P": ["inspect", prefix],
            "hesnr -v inspect P": ["-v", "inspect", prefix],
            "hesnr score": ["score"],
        }
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"{args.repeats} runs each, median wall seconds; CPUs {os.cpu_count()}")
        base, _, _ = timed([sys.executable, "-c", "pass"], None, args.repeats, tmp)
        print(f"{'python -c pass (interpreter start)':40s} {base:7.3f} s")
        try:
            import importlib.util

            has_mcore = importlib.util.find_spec("megatron.core") is not None
        except ModuleNotFoundError:
            has_mcore = False
        if has_mcore:
            removed, _, _ = timed([sys.executable, "-c", "import megatron.core.datasets.indexed_dataset"], None,
                                  args.repeats, tmp)
            print(f"{'import megatron.core...indexed_dataset':40s} {removed:7.3f} s   (the import the data commands no "
                  "longer make)")
        else:
            print(f"{'import megatron.core...indexed_dataset':40s}     n/a   (megatron-core not installed)")
        header = f"{'command':40s} {'now':>7s}   goal < 1 s   TE/Apex lines"
        if old is not None:
            header += f"   {'before':>7s}  before/now  TE/Apex lines"
        print(header)
        worst = 0.0
        for name, cmd in commands.items():
            now, rc, warned = timed([sys.executable, "-m", "megatron_hesnr.cli", *cmd], REPO, args.repeats, tmp)
            worst = max(worst, now)
            line = f"{name:40s} {now:7.3f}   {'met' if now < GOAL_S else 'MISSED':>10s}   {warned:13d}"
            if old is not None:
                before, _, warned_before = timed([sys.executable, "-m", "megatron_hesnr.cli", *cmd], old,
                                                 args.repeats, tmp)
                line += f"   {before:7.3f}  {before / now:9.1f}x  {warned_before:13d}"
            print(f"{line}   (exit {rc})")
        print(f"slowest command: {worst:.3f} s (goal < {GOAL_S:.0f} s); "
              f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
