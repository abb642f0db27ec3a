#!/bin/bash
# One-shot GPU acceptance: every measurement the project needs from a lent GPU, in one command.
#
#   bash benchmarks/gpu_acceptance.sh OUT_DIR          # one GPU, about 10 minutes at most
#   bash benchmarks/gpu_acceptance.sh --cpu OUT_DIR    # every stage at tiny sizes on CPU (CI)
#
# Stages, each under its own time budget (a stage out of time is killed and reported as
# "timeout"; the next stage still runs):
#   install      pip-installs the wheels carried in .whl/ (what the GPU image lacks:
#                benchmarks/prepare_gpu_acceptance.sh downloads them) into $HESNR_SITE
#   kernel_tests the compiled kernel against the reference (tests/test_kernel_triton_gpu.py);
#                --cpu: the split-row cases under TRITON_INTERPRET=1
#   bench        benchmarks/bench_token_stats.py (S x V_local grid, every kernel variant, peers)
#   integration  benchmarks/gpu_check_integration.py (MoE GPTModel, HybridModel: pass time,
#                peak memory, overhead against the plain evaluation forward)
#   logits_memory benchmarks/bench_logits_memory.py: one HE-SNR pass with the whole logits vs the
#                chunked capture at 32K and 128K tokens (bf16, 129,280 vocabulary, TP 1): peak GPU
#                memory, time, records equal; --cpu: tiny sizes (skipped before megatron-core 0.18)
#   example      benchmarks/gpu_run_example.sh against the Megatron-LM entry files in
#                .megatron-lm/ (MEGATRON_LM_DIR to override); --cpu: the two CPU end-to-end
#                launch tests of tests/test_megatron_e2e.py that check the same things
#
# OUT_DIR gets acceptance.json (every stage: status ok/failed/timeout/skipped, seconds,
# budget, exit code, command; plus the benchmark's best kernel launch per size and the
# integration checks), acceptance.log (all output), bench_token_stats.json,
# integration.json, logits_memory.json and the example's logs and JSONL: at most 8 files, no folders, so that
# all of it comes back from a lent machine.  Scratch files go to HESNR_SCRATCH (default:
# a fresh temporary folder).
# Exit status: 0 when every stage is ok or skipped, else 1.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

CPU=0
OUT=""
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        -*) echo "gpu_acceptance.sh: unknown option $arg (expected --cpu and an output folder)" >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "gpu_acceptance.sh: one output folder, got '$OUT' and '$arg'" >&2; exit 2; }
           OUT=$arg ;;
    esac
done
[ -n "$OUT" ] || { echo "usage: bash benchmarks/gpu_acceptance.sh [--cpu] OUT_DIR" >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

PY=${PYTHON:-python3}
export PYTHON="$PY"  # gpu_run_example.sh uses the same interpreter
LOG="$OUT/acceptance.log"
if [ -n "${HESNR_SCRATCH:-}" ]; then
    SCRATCH=$HESNR_SCRATCH && mkdir -p "$SCRATCH"
else
    SCRATCH=$(mktemp -d -t hesnr_acceptance.XXXXXX) && trap 'rm -rf "$SCRATCH"' EXIT
fi
TSV="$SCRATCH/stages.tsv"
SITE=${HESNR_SITE:-/tmp/hesnr_site}
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# A free port: other jobs on the machine may hold Megatron's usual ones.
MASTER_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MASTER_ADDR=127.0.0.1 MASTER_PORT
: > "$LOG"
: > "$TSV"
T0=$(date +%s.%N)

# Integration passes: gpu_check_integration.py's flags: padded vs length-bucketed on the
# same windows (on the GPU at 32K, the context the bucketing is for).
if [ "$CPU" = 1 ]; then
    INTEGRATION_FLAGS=${HESNR_INTEGRATION_FLAGS:---both}
else
    INTEGRATION_FLAGS=${HESNR_INTEGRATION_FLAGS:---both --seq-length 32768}
fi

# Time budgets (s) per stage; HESNR_BUDGET_<STAGE> overrides one (e.g. HESNR_BUDGET_BENCH=300).
if [ "$CPU" = 1 ]; then
    # Sized for a loaded 2-core CI machine.
    B_INSTALL=60 B_KERNEL=240 B_BENCH=300 B_INTEGRATION=300 B_LOGITS=300 B_EXAMPLE=300
    export CUDA_VISIBLE_DEVICES=""
else
    # 10 minutes in all on one H200 (the lease is 15, start-up included).
    B_INSTALL=20 B_KERNEL=75 B_BENCH=180 B_INTEGRATION=100 B_LOGITS=120 B_EXAMPLE=105
fi
B_INSTALL=${HESNR_BUDGET_INSTALL:-$B_INSTALL} B_KERNEL=${HESNR_BUDGET_KERNEL_TESTS:-$B_KERNEL}
B_BENCH=${HESNR_BUDGET_BENCH:-$B_BENCH} B_INTEGRATION=${HESNR_BUDGET_INTEGRATION:-$B_INTEGRATION}
B_EXAMPLE=${HESNR_BUDGET_EXAMPLE:-$B_EXAMPLE} B_LOGITS=${HESNR_BUDGET_LOGITS_MEMORY:-$B_LOGITS}

# run_stage NAME BUDGET_S COMMAND... : run under `timeout`, record status, seconds and rc.
run_stage() {
    local name=$1 budget=$2
    shift 2
    local t0 rc status
    t0=$(date +%s.%N)
    printf '\n===== stage %s (budget %ss): %s\n' "$name" "$budget" "$*" | tee -a "$LOG"
    timeout --kill-after=10 "$budget" "$@" >> "$LOG" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    local secs
    secs=$("$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t0" "$(date +%s.%N)")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$budget" "$*" >> "$TSV"
    printf '===== stage %s: %s (rc %s, %ss)\n' "$name" "$status" "$rc" "$secs" | tee -a "$LOG"
}

skip_stage() {  # skip_stage NAME REASON
    printf '%s\tskipped\t\t0\t0\t%s\n' "$1" "$2" >> "$TSV"
    printf '\n===== stage %s: skipped (%s)\n' "$1" "$2" | tee -a "$LOG"
}

# ---------------------------------------------------------------- install
if [ "$CPU" = 1 ]; then
    skip_stage install "--cpu uses the current environment"
elif compgen -G "$HERE/.whl/*.whl" > /dev/null; then
    run_stage install "$B_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" "$HERE"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
else
    run_stage install "$B_INSTALL" bash -c 'echo "no wheels in .whl/: run benchmarks/prepare_gpu_acceptance.sh on the development machine and carry .whl" >&2; exit 1'
fi
"$PY" - >> "$LOG" 2>&1 <<'PY'
import importlib.metadata as md, platform
import torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for pkg in ("triton", "megatron-core", "liger-kernel"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "not installed")
PY

cd "$HERE"
# ---------------------------------------------------------------- kernel tests
if [ "$CPU" = 1 ]; then
    run_stage kernel_tests "$B_KERNEL" env TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_kernel_triton.py -k split
else
    run_stage kernel_tests "$B_KERNEL" "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_triton_gpu.py
fi

# ---------------------------------------------------------------- benchmark
if [ "$CPU" = 1 ]; then
    run_stage bench "$B_BENCH" "$PY" benchmarks/bench_token_stats.py --device cpu --tokens 4 --vocab 300 97 \
        --repeats 1 --warmup 0 --json "$OUT/bench_token_stats.json"
else
    run_stage bench "$B_BENCH" "$PY" benchmarks/bench_token_stats.py --json "$OUT/bench_token_stats.json"
fi

# ---------------------------------------------------------------- integration
if [ "$CPU" = 1 ]; then
    # shellcheck disable=SC2086  # INTEGRATION_FLAGS is a list of flags
    run_stage integration "$B_INTEGRATION" "$PY" benchmarks/gpu_check_integration.py --cpu \
        --out "$OUT/integration.json" $INTEGRATION_FLAGS
else
    # shellcheck disable=SC2086
    run_stage integration "$B_INTEGRATION" "$PY" -m torch.distributed.run --nproc-per-node 1 \
        --master-port "$MASTER_PORT" benchmarks/gpu_check_integration.py --out "$OUT/integration.json" \
        $INTEGRATION_FLAGS
fi

# ---------------------------------------------------------------- logits memory
# The whole logits vs the chunked capture (statistics made inside GPTModel's output_processor).
if ! "$PY" -c "from megatron_hesnr.evaluation.capture import core_has_output_processor as f; raise SystemExit(not f())" 2>/dev/null; then
    skip_stage logits_memory "megatron-core's GPTModel takes no output_processor (needs megatron-core >= 0.18)"
elif [ "$CPU" = 1 ]; then
    run_stage logits_memory "$B_LOGITS" "$PY" benchmarks/bench_logits_memory.py --table --seq-lengths 256 \
        --vocab-size 1024 --tps 1 --chunks 64 --json "$OUT/logits_memory.json"
else
    run_stage logits_memory "$B_LOGITS" "$PY" benchmarks/bench_logits_memory.py --table --device cuda --dtype bf16 \
        --seq-lengths 32768 131072 --vocab-size 129280 --tps 1 --chunks auto --rtol 1e-5 \
        --json "$OUT/logits_memory.json"
fi

# ---------------------------------------------------------------- example launch
if [ "$CPU" = 1 ]; then
    # Megatron's pretrain() on CPU needs the test suite's CUDA-on-CPU shim: the end-to-end
    # tests that mirror gpu_run_example.sh (records at the evaluation iterations, training
    # identical with and without the flags).  HESNR_CPU_EXAMPLE_TESTS: other pytest args.
    if [ -n "${HESNR_CPU_EXAMPLE_TESTS:-}" ]; then
        read -r -a EXAMPLE_TESTS <<< "$HESNR_CPU_EXAMPLE_TESTS"
    else
        EXAMPLE_TESTS=(tests/test_megatron_e2e.py -k
                       "records_and_lines_at_the_eval_iterations or training_bit_identical_with_and_without_flags")
    fi
    if [ -z "${HESNR_CPU_EXAMPLE_TESTS:-}" ] && ! "$PY" -c "import megatron.training" 2>/dev/null; then
        # Megatron's training loop ships in the megatron-core wheel from 0.17 (Python >= 3.12).
        skip_stage example "megatron.training is not importable: needs megatron-core >= 0.17 on Python >= 3.12"
    else
        run_stage example "$B_EXAMPLE" "$PY" -m pytest -q -p no:cacheprovider "${EXAMPLE_TESTS[@]}"
    fi
else
    run_stage example "$B_EXAMPLE" env MEGATRON_LM_DIR="${MEGATRON_LM_DIR:-$HERE/.megatron-lm}" \
        bash benchmarks/gpu_run_example.sh "$SCRATCH/example"
    for f in plain.log hesnr.log hesnr.jsonl; do
        [ -f "$SCRATCH/example/$f" ] && cp "$SCRATCH/example/$f" "$OUT/example_$f"
    done
fi

# ---------------------------------------------------------------- summary
"$PY" - "$OUT" "$TSV" "$CPU" "$T0" <<'PY'
import json, sys, time
from pathlib import Path

out, tsv, cpu, t0 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
stages = []
for line in tsv.read_text().splitlines():
    name, status, rc, secs, budget, cmd = line.split("\t", 5)
    stage = {"name": name, "status": status, "seconds": float(secs), "budget_s": int(budget)}
    stage.update({"rc": int(rc), "command": cmd} if status != "skipped" else {"reason": cmd})
    stages.append(stage)
summary = {"mode": "cpu" if cpu else "gpu", "seconds": round(time.time() - t0, 2),
           "ok": all(s["status"] in ("ok", "skipped") for s in stages), "stages": stages}
try:
    import torch
    summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
except Exception as exc:  # the summary must be written whatever happened
    summary["device"] = f"unknown ({exc})"
for key, name in (("bench", "bench_token_stats.json"), ("integration", "integration.json"),
                  ("logits_memory", "logits_memory.json")):
    path = out / name
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        summary[key] = {"missing": f"{name}: {exc}"}
        continue
    if key == "bench":
        summary[key] = {"environment": data.get("environment"), "best_kernel": data.get("best_kernel"),
                        "verdicts": data.get("verdicts"), "not_measured": data.get("not_measured")}
    elif key == "logits_memory":  # every measurement but the metrics (the log has the side-by-side table)
        summary[key] = [{k: v for k, v in row.items() if k != "metrics"} for row in data]
    else:
        summary[key] = data
(out / "acceptance.json").write_text(json.dumps(summary, indent=1, default=str))
print("\nstage         status    seconds  budget")
for s in stages:
    print(f"{s['name']:<13} {s['status']:<9} {s['seconds']:7.1f} {s['budget_s']:7d}")
for row in (summary.get("bench") or {}).get("best_kernel") or []:
    print("best kernel:", json.dumps(row))
print(f"wrote {out / 'acceptance.json'} and {out / 'acceptance.log'}")
sys.exit(0 if summary["ok"] else 1)
PY
