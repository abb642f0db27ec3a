"""A Megatron checkpoint through the hook (``--load --skip-train``) and its Hugging Face export through
``hesnr score --hf`` give the same record (1e-4 relative).

Megatron-LM's real ``pretrain()`` on the CPU (as in test_megatron_e2e.py) trains a tiny Llama-shaped GPT
(RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases, untied output layer; hidden 128, 4 heads,
2 query groups, 2 layers, the DeepSeek tokenizer's vocabulary) for 2 iterations and saves it in the
``torch`` checkpoint format; a second launch loads it with ``--skip-train`` and the HE-SNR flags.  The
export is a small test-only conversion of exactly this architecture into ``LlamaForCausalLM``:
Megatron-Bridge's converter is not used because the Bridge wheel is installed ``--no-deps`` here (its
requirements are CUDA-only: Transformer Engine and friends) and its Megatron-side model providers build
Transformer Engine layers, which do not run on this CPU machine.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("megatron.training")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

from test_megatron_e2e import checkout, launch  # noqa: E402,F401  (fixtures)  # hesnr_set: conftest
from test_score import assert_records_agree, cli  # noqa: E402

HIDDEN, FFN, HEADS, GROUPS, LAYERS, SEQ = 128, 256, 4, 2, 2, 128
ARCH = ["--hidden-size", str(HIDDEN), "--ffn-hidden-size", str(FFN), "--num-attention-heads", str(HEADS),
        "--group-query-attention", "--num-query-groups", str(GROUPS), "--num-layers", str(LAYERS),
        "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
        "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--seq-length", str(SEQ),
        "--max-position-embeddings", str(SEQ), "--ckpt-format", "torch", "--train-iters", "2",
        "--eval-interval", "2"]


def export_to_llama(ckpt_iter: Path, out: Path, tokenizer_json: Path) -> Path:
    """Megatron (local transformer impl, this architecture) -> LlamaForCausalLM safetensors + tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    state = torch.load(ckpt_iter / "mp_rank_00" / "model_optim_rng.pt", map_location="cpu", weights_only=False)
    m = {k: v for k, v in state["model"].items() if not k.endswith("_extra_state")}
    vocab = m["embedding.word_embeddings.weight"].shape[0]
    hd = HIDDEN // HEADS
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_attention_heads=HEADS,
                      num_key_value_heads=GROUPS, num_hidden_layers=LAYERS, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
                      mlp_bias=False)
    hf = {"model.embed_tokens.weight": m["embedding.word_embeddings.weight"],
          "model.norm.weight": m["decoder.final_layernorm.weight"], "lm_head.weight": m["output_layer.weight"]}
    per_group = HEADS // GROUPS
    for i in range(LAYERS):
        p = f"decoder.layers.{i}."
        q = f"model.layers.{i}."
        # linear_qkv rows: per query group, its query heads, then one key head, then one value head
        qkv = m[p + "self_attention.linear_qkv.weight"].view(GROUPS, (per_group + 2) * hd, HIDDEN)
        hf[q + "self_attn.q_proj.weight"] = qkv[:, :per_group * hd].reshape(HEADS * hd, HIDDEN)
        hf[q + "self_attn.k_proj.weight"] = qkv[:, per_group * hd:(per_group + 1) * hd].reshape(GROUPS * hd, HIDDEN)
        hf[q + "self_attn.v_proj.weight"] = qkv[:, (per_group + 1) * hd:].reshape(GROUPS * hd, HIDDEN)
        hf[q + "self_attn.o_proj.weight"] = m[p + "self_attention.linear_proj.weight"]
        hf[q + "input_layernorm.weight"] = m[p + "self_attention.linear_qkv.layer_norm_weight"] \
            if p + "self_attention.linear_qkv.layer_norm_weight" in m else m[p + "input_layernorm.weight"]
        hf[q + "post_attention_layernorm.weight"] = m[p + "mlp.linear_fc1.layer_norm_weight"] \
            if p + "mlp.linear_fc1.layer_norm_weight" in m else m[p + "pre_mlp_layernorm.weight"]
        gate, up = m[p + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        hf[q + "mlp.gate_proj.weight"], hf[q + "mlp.up_proj.weight"] = gate, up
        hf[q + "mlp.down_proj.weight"] = m[p + "mlp.linear_fc2.weight"]
    model = LlamaForCausalLM(cfg).float()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in hf.items()}, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    model.save_pretrained(out)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    shutil.copy(tokenizer_json.parent / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def test_megatron_checkpoint_and_its_hf_export_give_the_same_record(tmp_path, checkout, hesnr_set,
                                                                   deepseek_tokenizer_json):
    ckpt = tmp_path / "ckpt"
    launch(tmp_path / "train", checkout, [*ARCH, "--save", str(ckpt), "--save-interval", "2"])
    assert (ckpt / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    hook = launch(tmp_path / "load", checkout, [*ARCH, "--load", str(ckpt), "--skip-train"], hesnr=hesnr_set)
    [rec] = hook.records
    assert rec["iteration"] == 2 and rec["checkpoint"] == str(ckpt / "iter_0000002")

    export = export_to_llama(ckpt / "iter_0000002", tmp_path / "iter_0000002_hf", Path(deepseek_tokenizer_json))
    out = tmp_path / "export.jsonl"
    r = cli("score", f"swe={hesnr_set}", "--hf", export, "--jsonl", out, "--seq-length", SEQ, "--step", 2,
            "--run-name", "export")
    assert r.returncode == 0, r.stderr
    [served] = [json.loads(line) for line in out.read_text().splitlines()]
    assert served["config"]["data"] == rec["config"]["data"]  # the same windows
    assert rec["metrics"]["num_tokens"] > 0
    assert_records_agree(rec, served, rel=1e-4)
