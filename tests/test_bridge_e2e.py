"""End to end: Megatron-Bridge's real ``pretrain()`` loop on the CPU (gloo) with ``HESNRCallback``.

Every launch is ``torchrun ... tests/megatron_launch.py --bridge examples/bridge_pretrain_hesnr.py``
(the CPU shim and Bridge's import workarounds, then the example script exactly as a user starts
it) with the tiny recipe ``tests/bridge_tiny_recipe.py`` (2-layer GPT, the deepseek tokenizer's
129280-token vocabulary, 4 iterations, a validation every 2) and Bridge's ``section.field=value``
overrides. The HE-SNR set is two real mini-swe-agent trajectories prepared with the real
tokenizer (``conftest.hesnr_set``). Six launches, shared by all tests:

* ``plain`` / ``single``: one process without / with the callback (bit-identical training);
* ``leak``: ``single`` with a callback that draws once from the training RNG (negative control);
* ``dp2`` / ``tp2``: two processes, data- / tensor-parallel;
* ``reference``: one process evaluating each saved checkpoint of ``single``, ``dp2`` and ``tp2``
  for evaluation only (``validation.skip_train=true checkpoint.load=... checkpoint.ckpt_step=N``,
  the same example's path), against which every record of the three layouts is compared.

The first evaluation of every launch runs twice (``HESNR_E2E_SECOND_CAPTURE``): with the default, chunked
capture and with the whole logits; ``launch`` checks that their records agree to 1e-6.

At random initialisation no target is among the model's top-10 candidates, so the set has no
high-entropy token: HE-SNR and HE-PPL are NaN (left out of Bridge's loggers, with a log line),
while PPL, top-1 accuracy and their standard errors are finite and logged.

Needs megatron.training (megatron-core >= 0.19), megatron-bridge 0.6 and Bridge's runtime
imports (the Python 3.12 CI leg); skipped elsewhere, failed in CI.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_py312_modules

# Bridge's runtime imports (installed in the Python 3.12 leg, see .ci/run).
NEEDS = ("megatron.training", "megatron.bridge", "transformers", "omegaconf", "hydra", "modelopt", "megatron.energon",
         "tensorboard")
require_py312_modules("test_bridge_e2e", NEEDS)

from test_megatron_e2e import (  # noqa: E402
    SECOND_CAPTURE,
    Run,
    assert_same_state,
    captures_agree,
    first_difference,
    training_hex,
)

LAUNCH = REPO / "tests" / "megatron_launch.py"
EXAMPLE = REPO / "examples" / "bridge_pretrain_hesnr.py"
REFERENCE = REPO / "tests" / "bridge_eval_checkpoints.py"
RECIPE = ["--recipe", "bridge_tiny_recipe:tiny_gpt_pretrain_config"]
#: Finite at random initialisation (see the module docstring) beside the two that are NaN there.
LOSS_DICT_METRICS = ["--hesnr-loss-dict-metrics", "hesnr", "he_ppl", "ppl", "top1_acc"]
TIMEOUT = 420
WALL: dict[str, dict] = {}


class BridgeRun(Run):
    """One finished launch: its log (all ranks), each rank's log, records and training trace."""

    def __init__(self, out: Path, log: str, rank_logs: dict[int, str]):
        super().__init__(out, log)
        self.rank_logs = rank_logs

    def rank_lines(self, rank: int, needle: str) -> list[str]:
        return [x for x in self.rank_logs[rank].splitlines() if needle in x]


def launch(out: Path, args: list, *, nproc: int = 1, script: Path = EXAMPLE, env: dict | None = None,
           name: str | None = None) -> BridgeRun:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--log-dir", str(out / "ranks"), "--redirects", "3", str(LAUNCH), "--bridge", str(script), *args]
    e = dict(os.environ, HESNR_E2E_TRACE=str(out / "trace"), HESNR_E2E_TIMING=str(out / "timing"), **SECOND_CAPTURE,
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
             OMP_NUM_THREADS="1", CUDA_DEVICE_MAX_CONNECTIONS="1", PYTHONWARNINGS="ignore")
    e.update(env or {})
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=out, env=e, capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - t0
    rank_logs = {}
    for rank in range(nproc):
        files = sorted((out / "ranks").glob(f"*/attempt_0/{rank}/std*.log"))
        rank_logs[rank] = "".join(f.read_text(errors="replace") for f in files)
    log = p.stdout + p.stderr + "".join(rank_logs.values())
    (out / "log").write_text(log)
    assert p.returncode == 0, f"rc {p.returncode}; log tail:\n{log[-6000:]}"
    # The first evaluation ran twice, chunked and with the whole logits: the records agree.
    compared = captures_agree(out, log)
    assert compared or not any("--hesnr-data-path" in str(a) for a in args) and script is not REFERENCE, out
    timing = [json.loads(f.read_text()) for f in sorted(out.glob("timing.*"))]
    WALL[name or out.name] = {"wall_s": wall, "nproc": nproc,
                              "import_s": max((t["import_s"] for t in timing), default=None)}
    return BridgeRun(out, log, rank_logs)


def hesnr_flags(hesnr_set: str, out: Path) -> list:
    return ["--hesnr-data-path", f"swe={hesnr_set}", "--hesnr-jsonl", str(out / "hesnr.jsonl"), *LOSS_DICT_METRICS]


def outputs(out: Path) -> list:
    """Bridge overrides: checkpoints at iterations 2 and 4 (the recipe's save_interval), TensorBoard."""
    return [f"checkpoint.save={out / 'ckpt'}", f"logger.tensorboard_dir={out / 'tb'}"]


@pytest.fixture(scope="module", autouse=True)
def report_wall_times(request):
    yield
    if WALL:
        tr = request.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  {k}: {v['wall_s']:.1f} s wall, {v['nproc']} process(es), Bridge import "
                 f"{v['import_s']:.1f} s" for k, v in WALL.items()]
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if tr is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                tr.write_line("\ntest_bridge_e2e launches:\n" + "\n".join(lines))


# ------------------------------------------------------------------------------ launches
@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> BridgeRun:
    """The example without --hesnr-* flags: no callback."""
    out = tmp_path_factory.mktemp("plain")
    return launch(out, [*RECIPE, *outputs(out)], name="plain")


@pytest.fixture(scope="module")
def single(tmp_path_factory, hesnr_set) -> BridgeRun:
    out = tmp_path_factory.mktemp("single")
    return launch(out, [*RECIPE, *hesnr_flags(hesnr_set, out), *outputs(out)], name="single")


@pytest.fixture(scope="module")
def leak(tmp_path_factory, hesnr_set) -> BridgeRun:
    out = tmp_path_factory.mktemp("leak")
    return launch(out, [*RECIPE, *hesnr_flags(hesnr_set, out), *outputs(out)], env={"HESNR_E2E_LEAK_RNG": "1"},
                  name="leak")


LAYOUTS = {"dp2": [], "tp2": ["model.tensor_model_parallel_size=2"]}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, hesnr_set, single) -> dict[str, BridgeRun]:
    runs = {"single": single}
    for name, extra in LAYOUTS.items():
        out = tmp_path_factory.mktemp(name)
        runs[name] = launch(out, [*RECIPE, *hesnr_flags(hesnr_set, out), *outputs(out), *extra], nproc=2, name=name)
    return runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, hesnr_set, layouts) -> dict[tuple[str, int], dict]:
    """``{(layout, step): record}`` of one process evaluating each saved checkpoint, nothing trained."""
    out = tmp_path_factory.mktemp("reference")
    jobs, where = [], {}
    for name, run in layouts.items():
        for step in (2, 4):
            jsonl = out / f"{name}.{step}.jsonl"
            where[(name, step)] = jsonl
            jobs.append([*RECIPE, "--hesnr-data-path", f"swe={hesnr_set}", "--hesnr-jsonl", str(jsonl),
                         "validation.skip_train=true", f"checkpoint.load={run.out / 'ckpt'}",
                         f"checkpoint.ckpt_step={step}"])
    (out / "jobs.json").write_text(json.dumps(jobs))
    ref = launch(out, [str(out / "jobs.json")], script=REFERENCE, name="reference (6 checkpoints)")
    assert not list(out.glob("trace.*")), "the reference must not train"
    records = {}
    for key, jsonl in where.items():
        [records[key]] = [json.loads(x) for x in jsonl.read_text().splitlines()]  # one record per checkpoint
    assert ref.lines("skipping training")
    return records


def by_iteration(run: Run) -> dict:
    return {r["iteration"]: r for r in run.records}


# ------------------------------------------------------------------ 1. records and lines
@pytest.mark.parametrize("layout", ["single", "dp2", "tp2"])
def test_one_record_per_evaluation_and_the_line_on_the_last_rank(layouts, layout):
    run = layouts[layout]
    last = max(run.rank_logs)
    # Bridge fires on_eval_end at 2 and 4 in the loop, then again at 4 after training, then
    # on_test_end at 4: one record per evaluated iteration all the same.
    assert run.lines("validation loss at iteration 4 on validation set") and run.lines("on test set")
    assert [r["iteration"] for r in run.records] == [2, 4]
    for it in (2, 4):
        rec = by_iteration(run)[it]
        assert rec["dataset"] == "swe" and rec["consumed_samples"] == 4 * it
        assert rec["checkpoint"] == str(run.out / "ckpt" / f"iter_{it:07d}") and rec["run"] == "ckpt"
        assert rec["metrics"]["num_tokens"] == 221 and rec["metrics"]["num_invalid"] == 0
        assert 1.0e5 < rec["metrics"]["ppl"] < 1.5e5  # about the vocabulary size at initialisation
        [line] = run.rank_lines(last, f"validation hesnr-swe at iteration {it} |")
        assert "num_tokens: 221 |" in line
        for rank in run.rank_logs:
            if rank != last:
                assert not run.rank_lines(rank, "validation hesnr-swe"), rank


@pytest.mark.parametrize("layout", ["single", "dp2", "tp2"])
def test_records_equal_a_single_process_evaluation_of_the_saved_checkpoint(layouts, reference, layout):
    for it in (2, 4):
        got, ref = by_iteration(layouts[layout])[it], reference[(layout, it)]
        assert ref["iteration"] == it and ref["checkpoint"] == got["checkpoint"]
        assert ref["config"]["datasets"] == got["config"]["datasets"]
        assert_same_state(got, ref, rel=1e-5, what=f"{layout} iteration {it}")
        for key, value in got["metrics"].items():
            if isinstance(value, float):
                np.testing.assert_allclose(value, ref["metrics"][key], rtol=1e-5, err_msg=f"{layout} {it} {key}")


def test_layouts_trained_different_weights(layouts):
    """What makes the comparison above worth doing: each layout scores its own weights."""
    ppl = {name: by_iteration(run)[4]["metrics"]["ppl"] for name, run in layouts.items()}
    assert len({round(v, 3) for v in ppl.values()}) == 3, ppl


# --------------------------------------------------------------- 2. training untouched
def test_training_bit_identical_with_and_without_the_callback(plain, single):
    a, b = training_hex(plain), training_hex(single)
    assert [x[1] for x in a] == [1, 2, 3, 4] and all(x[2] and x[3] for x in a)
    assert first_difference(a, b) is None
    assert plain.lines("no --hesnr-data-path: training without HE-SNR") and not plain.records


def test_negative_control_an_rng_leak_breaks_bit_identity(plain, leak):
    a, b = training_hex(plain), training_hex(leak)
    assert a[:2] == b[:2]                      # steps 1-2 run before the first evaluation
    diff = first_difference(a, b)
    assert diff is not None and diff[0][1] == 3, diff


# ------------------------------------------------ 3. Bridge's line, TensorBoard, loss dict
def _bridge_line(run: BridgeRun, it: int) -> dict:
    [line] = run.lines(f"validation loss at iteration {it} |")
    return {m[1]: float(m[2]) for m in re.finditer(r"\| ([^|]+?) value: (\S+)", "|" + line.split("|", 1)[1])}


def test_metrics_join_bridges_validation_line_and_nan_ones_are_left_out_with_a_word(single):
    for it in (2, 4):
        m = by_iteration(single)[it]["metrics"]
        assert m["num_high_entropy"] == 0 and math.isnan(m["hesnr"]) and math.isnan(m["he_ppl"])
        line = _bridge_line(single, it)
        assert "lm loss" in line
        ours = {k: v for k, v in line.items() if k.startswith("hesnr/")}
        want = {}
        for cat, mm in (("all", m), ("action", m["by_category"]["action"])):
            for key in ("ppl", "ppl_stderr", "top1_acc", "top1_acc_stderr"):
                want[f"hesnr/swe/{cat}/{key}"] = mm[key]
        assert sorted(ours) == sorted(want)    # hesnr and he_ppl (NaN) are not there
        for key, value in want.items():
            assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key   # printed with 7 digits
        [warning] = [x for x in single.lines(f"HE-SNR set swe at iteration {it}: NaN, left out of TensorBoard")]
        assert "all: hesnr, hesnr_stderr, hesnr_topk, hesnr_topk_stderr, he_ppl, he_ppl_stderr (no high-entropy " \
               "token)" in warning


def test_metrics_in_tensorboard(single):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(single.out / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    scalar = {(t, e.step): e.value for t in tags for e in acc.Scalars(t)}
    for it in (2, 4):
        m = by_iteration(single)[it]["metrics"]
        for key in ("ppl", "ppl_stderr", "top1_acc", "top1_acc_stderr", "num_tokens", "high_entropy_fraction"):
            tag = f"hesnr/swe/all/{key}"
            assert scalar[(tag, it)] == pytest.approx(m[key], rel=1e-6), tag        # ours
            assert scalar[(f"{tag} vs samples", 4 * it)] == pytest.approx(m[key], rel=1e-6), tag
        for key in ("ppl", "ppl_stderr", "top1_acc"):                               # Bridge's, from total_loss_dict
            assert scalar[(f"hesnr/swe/all/{key} validation", it)] == pytest.approx(m[key], rel=1e-6), key
        assert (f"lm loss validation", it) in scalar
    assert not [t for t in tags if re.search(r"/(hesnr|hesnr_topk|he_ppl)(_stderr)?( |$)", t)], "NaN metrics logged"
    assert "hesnr/swe/entropy_topk" in acc.Tags()["histograms"]


# ------------------------------------------------------------------------- 4. the example
def test_the_example_is_what_ran(single):
    """The launches run examples/bridge_pretrain_hesnr.py's own main with the recipe override."""
    assert single.lines("HE-SNR: megatron-bridge logs total_loss_dict after on_eval_end")
    assert single.lines("HE-SNR set swe: 1 length buckets")   # start-up plan from Bridge's process groups
    cfg = by_iteration(single)[2]["config"]
    assert cfg["seq_length"] == 128 and cfg["jsonl"] == str(single.out / "hesnr.jsonl")
