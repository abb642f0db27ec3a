#!/usr/bin/env python
"""Megatron-LM's pretrain_hybrid.py (HybridModel, --hybrid-layer-pattern) with HE-SNR.

Same use as pretrain_gpt_hesnr.py; on checkouts older than 0.18 it falls back to
pretrain_mamba.py, the earlier name of the hybrid entry point.

    cd /path/to/Megatron-LM
    torchrun --nproc-per-node 8 /path/to/megatron-hesnr/examples/pretrain_hybrid_hesnr.py \
        --hybrid-layer-pattern "*E*E*E*E" "${MODEL_ARGS[@]}" --hesnr-data-path swe=/data/hesnr/swe
"""
from megatron_hesnr.megatron_lm.entry import run_megatron_entry

if __name__ == "__main__":
    run_megatron_entry("pretrain_hybrid")
