#!/bin/bash
# MoE mid-training at 32K context with HE-SNR at every evaluation (torchrun).
#
# One node:    bash moe_midtrain_32k_hesnr.sh [megatron args...]
# Many nodes:  NUM_NODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node0> bash moe_midtrain_32k_hesnr.sh  (on each node)
# Megatron arguments given to the script are appended after its own (the last occurrence of a
# flag wins); GPUS_PER_NODE sets the processes per node.
# Run from a Megatron-LM checkout (or set MEGATRON_LM_DIR); megatron-hesnr must be installed:
#   pip install 'megatron-hesnr[megatron,triton]'
# The HE-SNR sets come from `hesnr prepare` (one prefix per named set).
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/moe_model_args.sh"

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NUM_NODES=${NUM_NODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}

CHECKPOINT_PATH=${CHECKPOINT_PATH:-/checkpoints/moe-30b-a3b-midtrain}
BASE_CHECKPOINT=${BASE_CHECKPOINT:-/checkpoints/moe-30b-a3b-pretrain}
DATA_PATH=${DATA_PATH:-"0.7 /data/midtrain/code_text_document 0.3 /data/midtrain/swe_agent_text_document"}
HESNR_DIR=${HESNR_DIR:-/data/hesnr}

DISTRIBUTED_ARGS=(
    --nproc-per-node $GPUS_PER_NODE
    --nnodes $NUM_NODES
    --node-rank $NODE_RANK
    --master-addr $MASTER_ADDR
    --master-port $MASTER_PORT
)

PARALLEL_ARGS=(
    --tensor-model-parallel-size 2
    --pipeline-model-parallel-size 1
    --expert-model-parallel-size 8
    --context-parallel-size 2
    --sequence-parallel
    --use-distributed-optimizer
)

TRAINING_ARGS=(
    --seq-length 32768
    --max-position-embeddings 32768
    --micro-batch-size 1
    --global-batch-size 256
    --train-iters 20000
    --lr 3e-5
    --min-lr 3e-6
    --lr-decay-style cosine
    --lr-warmup-iters 200
    --weight-decay 0.1
    --clip-grad 1.0
    --recompute-granularity selective
    # Resume from our own checkpoints; only while there are none, start from the base
    # weights (Megatron then loads them as --finetune: iteration 0, no optimizer state).
    # A requeued job thus continues where it stopped instead of restarting at 0.
    --load $CHECKPOINT_PATH
    --pretrained-checkpoint $BASE_CHECKPOINT
    --save $CHECKPOINT_PATH
    --save-interval 500
    # SIGURG makes Megatron finish the current step (and its evaluation), save a checkpoint
    # and exit; the sbatch script sends it before the time limit.  Not SIGTERM: Slurm sends
    # that to every process of the job, and the torch_dist writer's helper process (a spawned
    # multiprocessing Manager) dies of it, so the save fails.  SIGURG is ignored by default
    # by torchrun and every helper (docs/slurm.md).
    --exit-signal-handler
    --exit-signal SIGURG
)

DATA_ARGS=(
    --data-path $DATA_PATH
    --split 998,2,0
)

EVAL_AND_LOGGING_ARGS=(
    --eval-interval 500
    --eval-iters 10
    --log-interval 10
    --tensorboard-dir $CHECKPOINT_PATH/tensorboard
    --wandb-project ${WANDB_PROJECT:-midtrain}
    --wandb-exp-name ${WANDB_NAME:-moe-30b-a3b-32k}
)

# HE-SNR: action tokens of SWE-bench trajectories, scored at every evaluation and, before the
# first step, the loaded weights (the base model at 0; a resumed job's checkpoint unless recorded).
HESNR_ARGS=(
    --hesnr-data-path swe_verified=$HESNR_DIR/swe_verified swe_gym=$HESNR_DIR/swe_gym
    --hesnr-long-policy window
    --hesnr-window-stride 16384
    --hesnr-report-categories action thought
    --hesnr-jsonl $CHECKPOINT_PATH/hesnr.jsonl
    --hesnr-eval-at-start
)

torchrun "${DISTRIBUTED_ARGS[@]}" "${MEGATRON_HESNR_DIR:-$HERE/../..}/examples/pretrain_gpt_hesnr.py" \
    "${MODEL_ARGS[@]}" "${MOE_ARGS[@]}" "${TOKENIZER_ARGS[@]}" "${PARALLEL_ARGS[@]}" \
    "${TRAINING_ARGS[@]}" "${DATA_ARGS[@]}" "${EVAL_AND_LOGGING_ARGS[@]}" "${HESNR_ARGS[@]}" "$@"
