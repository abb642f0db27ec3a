#!/usr/bin/env python
"""Megatron-LM's pretrain_gpt.py with HE-SNR at every evaluation (--hesnr-* flags).

Run it from a Megatron-LM checkout (or set MEGATRON_LM_DIR) with the arguments you
give pretrain_gpt.py plus the --hesnr-* flags:

    cd /path/to/Megatron-LM
    torchrun --nproc-per-node 8 /path/to/megatron-hesnr/examples/pretrain_gpt_hesnr.py \
        "${MODEL_ARGS[@]}" "${TRAINING_ARGS[@]}" --hesnr-data-path swe=/data/hesnr/swe_verified

It reuses the checkout's dataset provider, forward step and model builder, so the
training itself is exactly pretrain_gpt.py's (core 0.13 .. 0.19+).
"""
from megatron_hesnr.megatron_lm.entry import run_megatron_entry

if __name__ == "__main__":
    run_megatron_entry("pretrain_gpt")
