#!/bin/bash
# GPU check of the example entry point with a Megatron-LM checkout (one GPU).
#
#   MEGATRON_LM_DIR=/path/to/Megatron-LM bash benchmarks/gpu_run_example.sh [OUT_DIR]
#
# PYTHON (default python3) is the interpreter; MASTER_PORT (default 29561) torchrun's port.
#
# Needs megatron-core with megatron.training (>= 0.17, or a checkout on PYTHONPATH)
# and the checkout's entry files (pretrain_gpt.py, gpt_builders.py, model_provider.py).
# Runs a tiny MoE GPT for 10 iterations on mock data twice, without and with the
# --hesnr-* flags (HE-SNR at iterations 5 and 10 on a small synthetic prepared set),
# in deterministic mode, then checks: the HE-SNR line was printed, the JSONL has one
# record per evaluation, and every "lm loss" of the two runs is identical.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MEGATRON_LM_DIR=${MEGATRON_LM_DIR:?set MEGATRON_LM_DIR to a Megatron-LM checkout}
OUT=${1:-${OUT:-/tmp/hesnr_example}}
mkdir -p "$OUT"
export PYTHONPATH="$HERE:$MEGATRON_LM_DIR:${PYTHONPATH:-}"
PYTHON=${PYTHON:-python3}
export CUDA_DEVICE_MAX_CONNECTIONS=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 NCCL_ALGO=Ring

"$PYTHON" - "$OUT/synthetic" <<'PY'
import sys
import numpy as np
from megatron_hesnr.data.writer import DatasetWriter
rng = np.random.default_rng(0)
w = DatasetWriter(sys.argv[1], vocab_size=8000)
for _ in range(12):
    n = int(rng.integers(100, 1500))
    mask = np.zeros(n, dtype=np.uint8)
    mask[1:] = rng.choice([0, 1, 2, 3], size=n - 1, p=[0.3, 0.4, 0.2, 0.1])
    w.add(rng.integers(0, 8000, size=n), mask)
w.finalize({"tokenizer": {"vocab_size": 8000, "name": "synthetic"}})
PY

ARGS=(
    --num-layers 2 --hidden-size 256 --ffn-hidden-size 512 --num-attention-heads 4
    --num-experts 4 --moe-router-topk 2 --moe-ffn-hidden-size 256 --moe-token-dispatcher-type alltoall
    --moe-aux-loss-coeff 1e-2 --transformer-impl local --normalization RMSNorm --swiglu --disable-bias-linear
    --position-embedding-type rope --seq-length 512 --max-position-embeddings 512
    --micro-batch-size 2 --global-batch-size 4 --train-iters 10 --lr 1e-3 --min-lr 1e-4 --lr-warmup-iters 2
    --bf16 --mock-data --tokenizer-type NullTokenizer --vocab-size 8000 --split 90,10,0
    --eval-interval 5 --eval-iters 2 --log-interval 1 --seed 1234 --deterministic-mode
    --hidden-dropout 0.1 --attention-dropout 0.1
    # No Transformer Engine or Apex on a plain PyTorch image: their fused paths off.
    --no-rope-fusion --no-gradient-accumulation-fusion --no-masked-softmax-fusion --no-persist-layer-norm
)
HESNR=(--hesnr-data-path synthetic="$OUT/synthetic" --hesnr-jsonl "$OUT/hesnr.jsonl" --hesnr-window-stride 256)
rm -f "$OUT/hesnr.jsonl"
cd "$MEGATRON_LM_DIR"
LAUNCH=("$PYTHON" -m torch.distributed.run --nproc-per-node 1 --master-port "${MASTER_PORT:-29561}")
"${LAUNCH[@]}" "$HERE/examples/pretrain_gpt_hesnr.py" "${ARGS[@]}" > "$OUT/plain.log" 2>&1 || { tail -40 "$OUT/plain.log"; exit 1; }
"${LAUNCH[@]}" "$HERE/examples/pretrain_gpt_hesnr.py" "${ARGS[@]}" "${HESNR[@]}" > "$OUT/hesnr.log" 2>&1 || { tail -40 "$OUT/hesnr.log"; exit 1; }

grep "validation hesnr-" "$OUT/hesnr.log" | cut -c1-200
"$PYTHON" - "$OUT" <<'PY'
import json, re, sys
out = sys.argv[1]
def losses(path):
    return re.findall(r"iteration\s+(\d+)/.*?lm loss: ([0-9.E+-]+)", open(path).read())
plain, hesnr = losses(f"{out}/plain.log"), losses(f"{out}/hesnr.log")
records = [json.loads(l) for l in open(f"{out}/hesnr.jsonl")]
print("training losses (plain):", plain)
print("training losses (hesnr):", hesnr)
print("records:", [(r["iteration"], r["dataset"], r["metrics"]["num_tokens"], r["metrics"]["hesnr"]) for r in records])
ok = plain and plain == hesnr and [r["iteration"] for r in records] == [5, 10]
print("IDENTICAL LOSSES" if plain == hesnr else "LOSSES DIFFER", "| records at", [r["iteration"] for r in records])
sys.exit(0 if ok else 1)
PY
