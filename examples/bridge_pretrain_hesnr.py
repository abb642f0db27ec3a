#!/usr/bin/env python
"""Megatron-Bridge (NeMo) pre-/mid-training recipe with HE-SNR at every evaluation.

One process per GPU, the recipe's own settings, plus the --hesnr-* flags of the
Megatron-LM entry points and Bridge's section.field=value overrides:

    torchrun --nproc-per-node 8 examples/bridge_pretrain_hesnr.py \
        --recipe qwen3_30b_a3b_pretrain_config \
        --hesnr-data-path swe=/data/hesnr/swe_verified \
        --hesnr-jsonl /runs/qwen3-mid/hesnr.jsonl --hesnr-eval-at-start \
        checkpoint.pretrained_checkpoint=/ckpt/qwen3-30b-a3b-base \
        checkpoint.save=/runs/qwen3-mid/ckpt \
        validation.eval_interval=500 validation.eval_iters=10 \
        logger.tensorboard_dir=/runs/qwen3-mid/tb

(Bridge 0.3.x keeps the validation settings in ``train.``: ``train.eval_interval=500``.)
``--hesnr-eval-at-start`` records the base model at iteration 0 before the first step (and a
resumed job's checkpoint at its iteration, unless the records file holds it already).
The metric flags (``--hesnr-k 20 --hesnr-threshold 1.5``) fill ``HESNRBridgeConfig.metric``,
the ``AccumulatorConfig`` every set is measured with; a wrong one stops the script naming the flag.
A checkpoint sweep: ``validation.skip_train=true checkpoint.load=/runs/qwen3-mid/ckpt
checkpoint.ckpt_step=3000`` for each step; every run appends its record to the JSONL.
"""
import logging

from megatron_hesnr.bridge.entry import run_bridge_recipe

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run_bridge_recipe()
