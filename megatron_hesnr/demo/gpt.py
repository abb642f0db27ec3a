"""A small GPT that trains on two CPU cores in a few minutes.

Pre-LayerNorm decoder with learned positions and an untied output layer over the
*padded* vocabulary, as Megatron builds it: the vocabulary is padded to a multiple of
``make_vocab_size_divisible_by x TP`` and the padding rows of the output layer are real
parameters (they only ever see negative gradients), which is why HE-SNR excludes ids
>= the tokenizer's vocabulary size.

The output layer is kept apart from the trunk (:meth:`TinyGPT.hidden`) so that the
evaluation can give each tensor-parallel rank only its slice of the vocabulary
(:mod:`.eval_model`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int
    """The tokenizer's vocabulary size (ids >= this are padding)."""
    padded_vocab_size: int
    """Rows of the output layer (a multiple of 128 x the largest TP evaluated)."""
    seq_length: int = 256
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_mult: int = 4

    def __post_init__(self):
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size {self.padded_vocab_size} < vocab_size {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.ffn_mult * d)
        self.fc2 = nn.Linear(cfg.ffn_mult * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.seq_length, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(d)
        # [padded_vocab, hidden]: the layout of Megatron's output layer weight, whose
        # rows split contiguously over tensor-parallel ranks.
        self.output_weight = nn.Parameter(torch.empty(cfg.padded_vocab_size, d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        # GPT-2 style: shrink the residual projections with depth.
        for blk in self.blocks:
            nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * self.cfg.num_layers))
            nn.init.normal_(blk.fc2.weight, std=0.02 / math.sqrt(2 * self.cfg.num_layers))

    def hidden(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``[b, t, hidden]`` (after the last LayerNorm); positions ``0 .. t-1``
        unless ``position_ids`` ``[b, t]`` are given."""
        t = tokens.shape[1]
        if t > self.cfg.seq_length:
            raise ValueError(f"sequence of {t} tokens is longer than seq_length={self.cfg.seq_length}")
        pos = torch.arange(t, device=tokens.device) if position_ids is None else position_ids
        x = self.tok_emb(tokens) + self.pos_emb(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits over the padded vocabulary ``[b, t, padded_vocab]``."""
        return self.hidden(tokens) @ self.output_weight.t()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
