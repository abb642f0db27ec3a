"""The demo's checkpoints as Hugging Face checkpoints: ``GPT2LMHeadModel``, no custom code.

The demo GPT (:mod:`.gpt`) is GPT-2's block exactly: pre-LayerNorm (eps 1e-5), one fused
``[q|k|v]`` projection with heads contiguous, causal softmax attention scaled by
``1/sqrt(head_dim)``, an exact (erf) GELU MLP, learned positions added to the token
embeddings, a final LayerNorm and an untied output layer.  So the export only renames and
transposes (GPT-2 keeps its linear weights as ``[in, out]``); transformers (``AutoModelForCausalLM``)
and vLLM load it as ``GPT2LMHeadModel`` and compute the demo model's logits of every token on every
input of up to ``seq_length`` tokens.

Vocabulary: the tokenizer's, as a Megatron-to-Hugging-Face conversion writes it: the rows Megatron
padded the vocabulary with (ids >= the tokenizer's size, which no text encodes) are left out of the
embedding and the output layer.  HE-SNR excludes those ids from every softmax (the Megatron pass and
``hesnr score --hf`` by the tokenizer's vocabulary size), but a serving engine normalises over all the
output rows it has, so an export that kept them would give vLLM other log-probabilities.

Positions: the model was trained on ``seq_length`` positions; the export has two more rows, zeros
(never trained, never read by a window of ``seq_length`` inputs). A serving engine reads a window of
``seq_length`` inputs as a prompt of ``seq_length + 1`` tokens and generates one token after it, so
its context must be ``seq_length + 2``; ``hesnr score``'s default ``--seq-length`` (context - 2) is then
the demo's.

Written beside it: the demo's ``tokenizer.json`` byte for byte (``hesnr score`` checks it against the
prepared sets' tokenizer by its sha256) and a ``tokenizer_config.json`` naming the fast tokenizer.
The folder is written under a temporary name and renamed: it is there whole or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch

from .gpt import GPTConfig

#: Extra (zero) position rows: a serving engine's prompt of seq_length + 1 tokens and its one generated token.
EXTRA_POSITIONS = 2

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


def gpt2_config(cfg: GPTConfig, eod: int) -> dict:
    """``config.json`` of the export: GPT-2 with the demo's sizes."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.seq_length + EXTRA_POSITIONS,
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.ffn_mult * cfg.hidden_size,
        "activation_function": "gelu",        # exact erf GELU, as F.gelu
        "layer_norm_epsilon": 1e-5,           # nn.LayerNorm's default
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False,
        "bos_token_id": eod, "eos_token_id": eod,
        "torch_dtype": "float32",
        "hesnr_demo": {"trained_positions": cfg.seq_length, "padded_vocab_size": cfg.padded_vocab_size},
    }


def gpt2_tensors(state: dict, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The demo model's ``state_dict`` under GPT-2's names and layouts (the tokenizer's vocabulary only)."""
    v = cfg.vocab_size
    out = {"transformer.wte.weight": state["tok_emb.weight"][:v],
           "transformer.wpe.weight": torch.cat([state["pos_emb.weight"],
                                                state["pos_emb.weight"].new_zeros(EXTRA_POSITIONS, cfg.hidden_size)]),
           "transformer.ln_f.weight": state["ln_f.weight"], "transformer.ln_f.bias": state["ln_f.bias"],
           "lm_head.weight": state["output_weight"][:v]}
    renames = {"ln1": "ln_1", "ln2": "ln_2", "qkv": "attn.c_attn", "proj": "attn.c_proj", "fc1": "mlp.c_fc",
               "fc2": "mlp.c_proj"}
    for i in range(cfg.num_layers):
        for ours, theirs in renames.items():
            w, b = state[f"blocks.{i}.{ours}.weight"], state[f"blocks.{i}.{ours}.bias"]
            # GPT-2's Conv1D keeps [in, out]; LayerNorm weights are vectors and stay as they are.
            out[f"transformer.h.{i}.{theirs}.weight"] = w.t() if w.dim() == 2 else w
            out[f"transformer.h.{i}.{theirs}.bias"] = b
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The safetensors format: 8-byte little-endian header size, JSON header, the tensors' bytes."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        t = tensors[name].cpu().contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)   # the tensors start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def export_checkpoint(model_pt: Path, tokenizer_json: Path, out_dir: Path, eod: int) -> Path:
    """Write ``model_pt`` (a demo checkpoint) as a Hugging Face checkpoint at ``out_dir``."""
    ckpt = torch.load(model_pt, map_location="cpu", weights_only=True)
    cfg = GPTConfig(**ckpt["gpt_config"])
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_safetensors(gpt2_tensors(ckpt["model"], cfg), tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(gpt2_config(cfg, eod), indent=2) + "\n")
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.seq_length + EXTRA_POSITIONS},
            indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
