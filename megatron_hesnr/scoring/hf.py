"""``hesnr score --hf``: a Hugging Face transformers forward, logits through our own ``token_stats``.

The reference path: the same per-token statistics the Megatron pass computes from the same
logits (padding ids beyond the tokenizer's vocabulary excluded, as there).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..token_stats import token_stats
from .sets import ScoreError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class HFEngine:
    kind = "hf"

    def __init__(self, model_dir: str, *, vocab_size: int, dtype: str = "float32", device: str = "cpu"):
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError as exc:
            raise ScoreError(f"--hf needs transformers (pip install 'megatron-hesnr[score]'): {exc}") from None
        if not os.path.isdir(model_dir):
            raise ScoreError(f"--hf {model_dir}: not a directory")
        try:
            cfg = AutoConfig.from_pretrained(model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ScoreError(f"--hf {model_dir}: cannot load a causal LM ({' '.join(str(exc).split())[:300]})") from None
        self.checkpoint = os.path.abspath(model_dir)
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 0) or 2048
        self.model_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.vocab_size = vocab_size
        self.device = device

    @torch.no_grad()
    def window_stats(self, prompt: np.ndarray, k: int):
        ids = torch.from_numpy(np.asarray(prompt, dtype=np.int64))
        logits = self.model(input_ids=ids[None, :-1].to(self.device)).logits[0]
        return token_stats(logits, ids[1:].to(logits.device), k=k, vocab_size=min(self.vocab_size, logits.shape[-1]),
                           impl="torch").map(lambda t: t.cpu())

    def score(self, jobs, k: int):
        for doc, prompts in jobs:
            yield doc, [self.window_stats(p, k) for p in prompts]
