"""End to end: Megatron-LM's real ``pretrain()`` loop on the CPU (gloo) with the HE-SNR hook.

The user's checkout is the stock core_v0.19.0 entry files in ``../shared/megatron-lm``;
the processes are started by torchrun through ``tests/megatron_launch.py``
(:mod:`megatron_cpu_shim`). A tiny GPT (2 layers, hidden 64, the deepseek tokenizer's
129280-token vocabulary) trains 4 iterations on Megatron's mock data with
``--eval-interval 2``; the HE-SNR set is two real mini-swe-agent trajectories prepared
with the real tokenizer. The first evaluation of every launch runs twice, with the default (chunked)
capture and with the whole logits, and ``launch`` checks that their records agree to 1e-6 (per-trajectory
tables included). Needs megatron.training (megatron-core >= 0.19 wheel, the
Python 3.12 CI leg); skipped elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("megatron.training")

from conftest import IN_CI, REPO, SHARED  # noqa: E402
from float_tolerance import assert_tree_close  # noqa: E402

CHECKOUT = SHARED / "megatron-lm" / "core_v0.19.0"
LAUNCH = REPO / "tests" / "megatron_launch.py"
PATCH = REPO / "patches" / "megatron-lm-core_v0.19.0-hesnr.patch"
TIMEOUT = 300

MODEL = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128", "--num-attention-heads", "4",
    "--seq-length", "128", "--max-position-embeddings", "128",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "129280",
]
TRAIN = [
    "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "4", "--lr", "1e-3",
    "--lr-decay-style", "constant", "--seed", "1234", "--mock-data", "--split", "98,1,1",
    "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1", "--use-cpu-initialization",
    "--no-create-attention-mask-in-dataloader",
]
CPU = [
    "--transformer-impl", "local", "--distributed-backend", "gloo", "--no-gradient-accumulation-fusion",
    "--no-persist-layer-norm", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion",
    "--no-bias-dropout-fusion", "--no-rope-fusion",
]


@pytest.fixture(scope="module")
def checkout() -> Path:
    if not (CHECKOUT / "pretrain_gpt.py").is_file():
        msg = f"Megatron-LM core_v0.19.0 entry files not found at {CHECKOUT}"
        if IN_CI:
            pytest.fail(msg + ": CI must have ../shared beside the checkout")
        pytest.skip(msg)
    return CHECKOUT


class Run:
    """One finished launch: its log, JSONL records and per-rank training trace."""

    def __init__(self, out: Path, log: str):
        self.out, self.log = out, log
        jsonl = out / "hesnr.jsonl"
        self.records = [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.exists() else []
        self.trace = {}
        for f in sorted(out.glob("trace.*")):
            self.trace[int(f.suffix[1:])] = [json.loads(x) for x in f.read_text().splitlines()]

    def lines(self, needle: str) -> list[str]:
        return [x for x in self.log.splitlines() if needle in x]


def launch(out: Path, checkout: Path, args: list, *, nproc: int = 1, script: Path | None = None,
           hesnr: str | None = None, env: dict | None = None, expect_rc: int = 0) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(LAUNCH), str(script or REPO / "examples" / "pretrain_gpt_hesnr.py"), *MODEL, *TRAIN, *CPU, *args]
    if hesnr is not None:
        cmd += ["--hesnr-data-path", f"swe={hesnr}", "--hesnr-jsonl", str(out / "hesnr.jsonl")]
    e = dict(os.environ, MEGATRON_LM_DIR=str(checkout), HESNR_E2E_TRACE=str(out / "trace"), **SECOND_CAPTURE,
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
             OMP_NUM_THREADS="1", CUDA_DEVICE_MAX_CONNECTIONS="1", PYTHONWARNINGS="ignore")
    e.update(env or {})
    p = subprocess.run(cmd, cwd=out, env=e, capture_output=True, text=True, timeout=TIMEOUT)
    log = p.stdout + p.stderr
    (out / "log").write_text(log)
    assert p.returncode == expect_rc, f"rc {p.returncode} (expected {expect_rc}); log tail:\n{log[-6000:]}"
    if hesnr is not None and expect_rc == 0:
        assert captures_agree(out, log), "no HE-SNR record to compare"
    return Run(out, log)


#: Every launch runs its first evaluation twice (``HESNR_E2E_SECOND_CAPTURE``, see tests/megatron_launch.py):
#: with the default capture -- chunked: the statistics made inside GPTModel's output_processor, no whole
#: logits -- and with the whole logits (``--hesnr-logits-capture output_processor``).
SECOND_CAPTURE = {"HESNR_E2E_SECOND_CAPTURE": "output_processor"}


def captures_agree(out: Path, log: str) -> int:
    """The records of each JSONL under ``out`` that the whole-logits capture also made (the first evaluation)
    equal its records (state, per-trajectory tables included, and metrics to 1e-6 relative); returns how
    many records were compared."""
    n = 0
    for jsonl in sorted(out.rglob("*.jsonl")):
        full = jsonl.with_name(f"{jsonl.name}.{SECOND_CAPTURE['HESNR_E2E_SECOND_CAPTURE']}")
        got = [json.loads(x) for x in jsonl.read_text().splitlines()]
        ref = [json.loads(x) for x in full.read_text().splitlines()] if full.exists() else []
        assert ref or not got, f"{jsonl}: {len(got)} records, none of the whole-logits capture"
        assert len(ref) == len({r["dataset"] for r in got}), f"{full}: one record per set expected"
        for b in ref:
            [a] = [r for r in got if (r["iteration"], r["dataset"]) == (b["iteration"], b["dataset"])]
            what = f"{jsonl.name} iteration {a['iteration']} set {a['dataset']}: chunked vs whole logits"
            assert (a["config"]["logits_capture"], b["config"]["logits_capture"]) == ("auto", "output_processor")
            assert (a["iteration"], a["dataset"], a["checkpoint"]) == (b["iteration"], b["dataset"], b["checkpoint"])
            assert_same_state(a, b, rel=1e-6, what=what)
            for key, value in a["metrics"].items():
                if isinstance(value, float):
                    np.testing.assert_allclose(value, b["metrics"][key], rtol=1e-6, err_msg=f"{what}: {key}")
            n += 1
    if n:
        assert "HE-SNR logits capture chunked (statistics made inside GPTModel's output_processor" in log
    return n


def by_iteration(run: Run) -> dict:
    return {r["iteration"]: r for r in run.records}


def assert_same_state(got: dict, ref: dict, rel: float = 1e-5, what: str = "") -> None:
    """Accumulator states equal to ``rel``: they determine every metric of the record."""
    a, b = got["state"], ref["state"]
    numeric = ("scalars", "hist", "trajectories")
    assert {k: v for k, v in a.items() if k not in numeric} == {k: v for k, v in b.items() if k not in numeric}, what
    pairs = [(key, a[key], b[key]) for key in ("scalars", "hist")]
    # Per-trajectory sums (one row per trajectory of the set): same layout, sums to ``rel``.
    ta, tb = a["trajectories"], b["trajectories"]
    assert (ta["fields"], ta["num_documents"], sorted(ta["by_category"])) == \
        (tb["fields"], tb["num_documents"], sorted(tb["by_category"])), what
    pairs += [(f"trajectories.{c}.{f}", ta["by_category"][c][f], tb["by_category"][c][f])
              for c in ta["by_category"] for f in ta["fields"]]
    for key, x, y in pairs:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        assert x.shape == y.shape, f"{what}: state[{key!r}] shape"
        np.testing.assert_allclose(x, y, rtol=rel, atol=1e-9, err_msg=f"{what}: state[{key!r}]")


def training_hex(run: Run) -> list:
    """(iteration, losses, grad norm) of every step on every rank, as float.hex strings."""
    return [(r["rank"], r["iteration"], r["losses"], r["grad_norm"]) for rank in sorted(run.trace)
            for r in run.trace[rank]]


def first_difference(a: list, b: list):
    for x, y in zip(a, b):
        if x != y:
            return x, y
    return None if len(a) == len(b) else ("length", len(a), len(b))


# ------------------------------------------------------------------ single process
@pytest.fixture(scope="module")
def plain(tmp_path_factory, checkout) -> Run:
    """The entry point without --hesnr-* flags (hook off)."""
    return launch(tmp_path_factory.mktemp("plain"), checkout, [])


@pytest.fixture(scope="module")
def with_hesnr(tmp_path_factory, checkout, hesnr_set) -> Run:
    return launch(tmp_path_factory.mktemp("with_hesnr"), checkout, [], hesnr=hesnr_set)


def test_records_and_lines_at_the_eval_iterations(with_hesnr):
    run = with_hesnr
    assert sorted(by_iteration(run)) == [2, 4] and len(run.records) == 2  # once per iteration
    for it in (2, 4):
        [line] = run.lines(f"validation hesnr-swe at iteration {it} |")
        assert "num_tokens: 221" in line
        rec = by_iteration(run)[it]
        assert rec["dataset"] == "swe" and rec["consumed_samples"] == 4 * it
        assert rec["metrics"]["num_tokens"] == 221
    # The line comes from inside evaluate(): before Megatron's own validation line (docs/megatron-lm.md).
    log = run.log
    assert log.index("validation hesnr-swe at iteration 2 |") < log.index("validation loss at iteration 2 |")


def test_training_bit_identical_with_and_without_flags(plain, with_hesnr):
    a, b = training_hex(plain), training_hex(with_hesnr)
    assert [x[1] for x in a] == [1, 2, 3, 4]
    assert first_difference(a, b) is None


def test_negative_control_rng_leak_breaks_bit_identity(tmp_path, checkout, hesnr_set, plain):
    """A hook that draws once from the training RNG after evaluating must be caught."""
    leaky = launch(tmp_path, checkout, [], hesnr=hesnr_set, env={"HESNR_E2E_LEAK_RNG": "1"})
    a, b = training_hex(plain), training_hex(leaky)
    assert a[:2] == b[:2]                      # steps 1-2 run before the first evaluation
    diff = first_difference(a, b)
    assert diff is not None and diff[0][1] == 3, diff


def test_stock_pretrain_gpt_with_patch_gives_same_records(tmp_path, checkout, hesnr_set, with_hesnr):
    copy = tmp_path / "Megatron-LM"
    shutil.copytree(checkout, copy)
    p = subprocess.run(["patch", "-p1", "--forward", "-i", str(PATCH)], cwd=copy, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    run = launch(tmp_path / "out", copy, [], hesnr=hesnr_set, script=copy / "pretrain_gpt.py")
    assert sorted(by_iteration(run)) == [2, 4]
    for it, rec in by_iteration(run).items():
        ref = by_iteration(with_hesnr)[it]
        # two processes: structure, counts and strings exactly, floats to 1e-12 (issue 30)
        assert_tree_close(rec["metrics"], ref["metrics"], f"iteration {it} metrics")
        assert_tree_close(rec["state"], ref["state"], f"iteration {it} state")
    assert first_difference(training_hex(run), training_hex(with_hesnr)) is None


def test_multi_token_prediction_model(tmp_path, checkout, hesnr_set):
    """--mtp-num-layers 1 (GPTModel with an MTP block; rope, which MTP requires): the main head is scored."""
    run = launch(tmp_path, checkout, ["--mtp-num-layers", "1", "--position-embedding-type", "rope"], hesnr=hesnr_set)
    assert sorted(by_iteration(run)) == [2, 4]
    for rec in run.records:
        m = rec["metrics"]
        assert m["num_tokens"] == 221 and m["num_invalid"] == 0 and 1.0e5 < m["ppl"] < 1.5e5  # ~ vocab size at init
    assert [x[1] for x in training_hex(run)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- parallel layouts
LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2"],
    "dp2_distributed_optimizer": ["--use-distributed-optimizer"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_records_equal_single_process_reference(tmp_path, checkout, hesnr_set, layout):
    """2 processes train with --save; one process --load --skip-train scores the same weights."""
    ckpt = tmp_path / "ckpt"
    run = launch(tmp_path / "train", checkout, [*LAYOUTS[layout], "--save", str(ckpt), "--save-interval", "4"],
                 nproc=2, hesnr=hesnr_set)
    assert sorted(by_iteration(run)) == [2, 4]
    assert len(run.lines("validation hesnr-swe at iteration 4 |")) == 1   # last rank only
    assert (ckpt / "iter_0000004").is_dir()
    ref = launch(tmp_path / "load", checkout, ["--load", str(ckpt), "--skip-train"], hesnr=hesnr_set)
    [rec] = ref.records
    assert rec["iteration"] == 4 and rec["checkpoint"] == str(ckpt / "iter_0000004")
    assert by_iteration(run)[4]["checkpoint"] == rec["checkpoint"]
    assert_same_state(by_iteration(run)[4], rec, what=layout)
    assert ref.lines("validation hesnr-swe at iteration 4 |")


# ------------------------------------------------------------------ launch scripts
CAPTURE_LAUNCH = r"""
torchrun() { printf '%s\0' "$@" > "$HESNR_ARGV_OUT"; }
srun() { while [[ "$1" == -* ]]; do shift; done; "$@"; }
scontrol() { echo node0; }
export -f torchrun srun scontrol
cd "$1" && bash "$2"
"""

PARSE_LAUNCH = r"""
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["HESNR_REPO"], "tests"))
import megatron_cpu_shim
megatron_cpu_shim.install()
from megatron.training.arguments import parse_args, validate_args
from megatron_hesnr.megatron_lm.args import add_hesnr_args, validate_hesnr_args
for name, world, argv in json.loads(os.environ["HESNR_ARGVS"]):
    os.environ["WORLD_SIZE"] = str(world)
    sys.argv = ["pretrain_gpt.py", *argv]
    args = parse_args(extra_args_provider=add_hesnr_args)
    validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
    cfg = validate_hesnr_args(args, has_output_processor=True)
    print("PARSED", name, args.world_size, args.create_attention_mask_in_dataloader, flush=True)
"""


def launch_argv(script: str, tmp_path: Path) -> tuple[int, list[str]]:
    """The Megatron arguments and world size a launch script hands torchrun (torchrun stubbed)."""
    out = tmp_path / f"argv.{script}"
    env = dict(os.environ, HESNR_ARGV_OUT=str(out), MEGATRON_HESNR_DIR=str(REPO), SLURM_NNODES="2",
               SLURM_JOB_NODELIST="node[0-1]", SLURM_JOB_ID="1", SLURM_NODEID="0",
               CHECKPOINT_PATH=str(tmp_path / "ckpt"), STEPS="2000")
    p = subprocess.run(["bash", "-c", CAPTURE_LAUNCH, "capture", str(tmp_path), str(REPO / "examples" / "launch" / script)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    words = out.read_bytes().decode().split("\0")[:-1]
    entry = next(i for i, w in enumerate(words) if w.endswith(".py"))
    opts = dict(zip(words[:entry:2], words[1:entry:2]))
    world = int(opts.get("--nproc-per-node", 1)) * int(opts.get("--nnodes", 1))
    return world, words[entry + 1:]


LAUNCH_SCRIPTS = ("moe_midtrain_32k_hesnr.sh", "moe_midtrain_32k_hesnr.sbatch", "context_extension_128k_cp.sbatch",
                  "checkpoint_sweep_hesnr.sbatch")


def test_launch_scripts_pass_megatron_parse_and_validate(tmp_path):
    """Every examples/launch script's arguments pass core 0.19's parse_args + validate_args + ours."""
    argvs = {s: launch_argv(s, tmp_path) for s in LAUNCH_SCRIPTS}
    env = dict(os.environ, HESNR_ARGVS=json.dumps([[s, w, a] for s, (w, a) in argvs.items()]), HESNR_REPO=str(REPO),
               RANK="0", LOCAL_RANK="0", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", PARSE_LAUNCH], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    parsed = {x.split()[1]: x.split()[2:] for x in p.stdout.splitlines() if x.startswith("PARSED")}
    assert sorted(parsed) == sorted(LAUNCH_SCRIPTS)
    for script, (world, argv) in argvs.items():
        assert int(parsed[script][0]) == world, script
        if script != "checkpoint_sweep_hesnr.sbatch":
            assert "--finetune" not in argv, script   # requeue-safe: resume from --load, base via --pretrained-checkpoint
            assert argv[argv.index("--load") + 1] == argv[argv.index("--save") + 1], script
            assert "--pretrained-checkpoint" in argv, script
            assert "--hesnr-eval-at-start" in argv, script   # the base model (or resumed checkpoint) first
    assert parsed["context_extension_128k_cp.sbatch"][1] == "False"   # no S x S mask at 128K
