"""``hesnr score --hf``: a Hugging Face transformers forward, logits through our own ``token_stats``.

The reference path: the same per-token statistics the Megatron pass computes from the same
logits (padding ids beyond the tokenizer's vocabulary excluded, as there).

Windows are batched: the windows of consecutive trajectories are gathered up to a token budget,
cut into forwards of at most ``max_batch_logits`` logits, right-padded to the longest window of the
forward (a causal model's logits at a real position do not see the padding after it; the padded
targets are labelled -100, not scorable) and run on torch's threads (``torch.get_num_threads()``,
one per core unless ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` say otherwise).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..metric.token_stats import token_stats
from .model_dir import HF_DTYPES, check_hf_dtype
from .sets import ScoreError

DTYPES = {name: getattr(torch, name) for name in HF_DTYPES}


class HFEngine:
    kind = "hf"

    def __init__(self, model_dir: str, *, vocab_size: int, dtype: str = "float32", device: str = "cpu",
                 max_batch_tokens: int = 16384, max_batch_logits: int = 2 ** 27):
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError as exc:
            raise ScoreError(f"--hf needs transformers (pip install 'megatron-hesnr[score]'): {exc}") from None
        if not os.path.isdir(model_dir):
            raise ScoreError(f"--hf {model_dir}: not a directory")
        check_hf_dtype(dtype)
        try:
            cfg = AutoConfig.from_pretrained(model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(device).eval()
        except Exception as exc:  # a truncated or corrupt weights file raises safetensors' own error type
            weights = [f for f in sorted(os.listdir(model_dir)) if f.endswith((".safetensors", ".bin"))]
            raise ScoreError(f"--hf {model_dir}: cannot load a causal LM from {', '.join(weights) or 'it'} "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
        self.checkpoint = os.path.abspath(model_dir)
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 0) or 2048
        self.model_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.vocab_size = vocab_size
        self.device = device
        self.max_batch_tokens = max_batch_tokens
        """Window tokens gathered (over consecutive trajectories) before they are run."""
        self.max_batch_logits = max_batch_logits
        """Most logits (rows x positions x vocabulary) one forward produces (2**27 fp32: 512 MiB)."""

    @torch.no_grad()
    def forward_stats(self, prompts: list[np.ndarray], k: int) -> list:
        """TokenStats of the targets ``1 .. len(p) - 1`` of every prompt, in one padded forward."""
        longest = max(len(p) for p in prompts) - 1
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        labels = torch.full((len(prompts), longest), -100, dtype=torch.long)
        for i, p in enumerate(prompts):
            t = torch.from_numpy(np.asarray(p, dtype=np.int64))
            ids[i, :len(t) - 1] = t[:-1]
            labels[i, :len(t) - 1] = t[1:]
        logits = self.model(input_ids=ids.to(self.device)).logits
        st = token_stats(logits, labels.to(logits.device), k=k, vocab_size=min(self.vocab_size, logits.shape[-1]),
                         impl="torch").map(lambda t: t.cpu())
        return [st.map(lambda t, i=i, n=len(p) - 1: t[i, :n]) for i, p in enumerate(prompts)]

    def window_stats(self, prompt: np.ndarray, k: int):
        return self.forward_stats([prompt], k)[0]

    def _rows_per_forward(self, length: int) -> int:
        return max(1, self.max_batch_logits // max(1, length * self.model_vocab))

    def _run(self, batch: list, k: int):
        """Every window of ``batch`` (jobs), longest first in forwards of equal-ish length; per job in order."""
        flat = [(j, w, p) for j, (_, ps) in enumerate(batch) for w, p in enumerate(ps)]
        flat.sort(key=lambda x: -len(x[2]))
        out = [[None] * len(ps) for _, ps in batch]
        i = 0
        while i < len(flat):
            n = self._rows_per_forward(len(flat[i][2]) - 1)
            chunk = flat[i:i + n]
            for (j, w, _), st in zip(chunk, self.forward_stats([p for _, _, p in chunk], k)):
                out[j][w] = st
            i += n
        for (doc, _), stats in zip(batch, out):
            yield doc, stats

    def score(self, jobs, k: int):
        batch, tokens = [], 0
        for job in jobs:
            batch.append(job)
            tokens += sum(len(p) for p in job[1])
            if tokens >= self.max_batch_tokens:
                yield from self._run(batch, k)
                batch, tokens = [], 0
        if batch:
            yield from self._run(batch, k)
