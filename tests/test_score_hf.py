"""``hesnr score --hf`` on the demo's exported checkpoints: the export computes the demo model's function,
batched windows give the one-window stats, a bad MODEL_DIR / --dtype is one line before anything slow,
and the closing lines name a NaN metric's reason.

The end-to-end check (``hesnr demo --quick``, then ``hesnr score --hf`` of its last checkpoint gives the
demo's record) is in test_demo.py, on the quick run made there.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

pytest.importorskip("transformers")

from megatron_hesnr.demo.gpt import GPTConfig, TinyGPT  # noqa: E402
from megatron_hesnr.demo.hf_export import export_checkpoint  # noqa: E402
from megatron_hesnr.demo.training import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random two-layer demo GPT saved as the demo saves it, and its export."""
    d = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=250, padded_vocab_size=256, seq_length=24, hidden_size=64, num_layers=2, num_heads=2)
    model = TinyGPT(cfg).eval()
    with torch.no_grad():   # non-trivial LayerNorm affine parameters and biases, as after training
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    pt = save_checkpoint(model, d / "checkpoints", 7, 0, 0.0, {})
    tok = d / "tokenizer.json"
    tok.write_text("{}")
    return model, export_checkpoint(pt, tok, d / "hf" / "iter_0000007", eod=0)


def test_export_is_a_gpt2_that_computes_the_demo_model(exported):
    from transformers import AutoModelForCausalLM

    model, path = exported
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.config.n_positions == model.cfg.seq_length + 2
    x = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.seq_length))
    with torch.no_grad():
        want, got = model(x), hf(input_ids=x).logits
        short = hf(input_ids=x[:, :5]).logits
    # the tokenizer's ids: the padding rows are left out, as a Megatron -> HF conversion does
    v = model.cfg.vocab_size
    assert got.shape[-1] == v < model.cfg.padded_vocab_size
    assert torch.allclose(got, want[..., :v], atol=1e-5, rtol=1e-5), (got - want[..., :v]).abs().max()
    assert torch.allclose(short, want[:, :5, :v], atol=1e-5, rtol=1e-5)
    # the untied output layer is the demo's own, not the embedding
    assert torch.equal(hf.lm_head.weight, model.output_weight[:v])
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)


def test_batched_windows_give_the_one_window_stats(exported):
    from megatron_hesnr.scoring.hf import HFEngine

    _, path = exported
    engine = HFEngine(str(path), vocab_size=250, max_batch_tokens=40)
    rng = np.random.default_rng(0)
    jobs = [(doc, [rng.integers(0, 250, n) for n in sizes])
            for doc, sizes in enumerate([(25, 25, 9), (3,), (25, 17), (2, 25)])]
    got = dict(engine.score(iter(jobs), k=5))
    assert sorted(got) == [0, 1, 2, 3]
    for doc, prompts in jobs:
        for p, st in zip(prompts, got[doc]):
            one = engine.window_stats(p, k=5)
            assert st.valid.shape == (len(p) - 1,)
            for name in ("entropy", "logp", "logq"):
                assert torch.allclose(getattr(st, name), getattr(one, name), atol=1e-5, rtol=1e-5), name
            assert torch.equal(st.valid, one.valid)


def _hesnr_subprocess(*args):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "megatron_hesnr.cli", "score", *map(str, args)], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    return r, time.monotonic() - t0


def _hesnr_inprocess(*args):
    from megatron_hesnr.cli import main

    err = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stderr(err):
        rc = main(["score", *map(str, args)])
    return rc, err.getvalue(), time.monotonic() - t0


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("what", ["missing", "file", "no-config"])
def test_a_model_dir_that_is_not_a_checkpoint_is_one_line_within_2_s(what, tmp_path):
    """Checked before torch, the sets or the weights load: the whole command (a new interpreter) ends in 2 s."""
    path = {"missing": tmp_path / "nonexistent" / "model", "file": tmp_path / "weights.bin",
            "no-config": tmp_path / "empty"}[what]
    if what == "file":
        path.write_bytes(b"x")
    if what == "no-config":
        path.mkdir()
    r, dt = _hesnr_subprocess("demo=data/demo", "--hf", path, "--jsonl", tmp_path / "s.jsonl")
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert line.startswith(f"hesnr score: --hf {path}: ")
    assert {"missing": "no such directory", "file": "not a directory", "no-config": "no config.json"}[what] in line
    assert dt < 2.0, f"{dt:.2f} s"
    assert not (tmp_path / "s.jsonl").exists()


def test_a_model_transformers_cannot_load_is_one_line_within_2_s(tmp_path):
    """An unknown model_type: named with the installed transformers' version before transformers, torch or
    the sets load: the whole command (a new interpreter) ends in 2 s."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "nonesuch_lm"}))
    r, dt = _hesnr_subprocess("demo=" + str(tmp_path / "no-such-set"), "--hf", path, "--jsonl",
                              tmp_path / "s.jsonl")
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert line.startswith(f"hesnr score: --hf {path}: transformers ") and "nonesuch_lm" in line, line
    assert dt < 2.0, f"{dt:.2f} s"


def test_a_known_model_type_with_a_config_transformers_refuses_is_one_line(tmp_path):
    """Past the fast model_type check, transformers' own reading of config.json still gives one line."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "rope_scaling": {"rope_type": "nonesuch"},
                                                  "n_layer": "two"}))
    rc, err, _ = _hesnr_inprocess("demo=" + str(tmp_path / "no-such-set"), "--hf", path, "--jsonl",
                                  tmp_path / "s.jsonl")
    assert rc == 2
    line = _one_line(err)
    assert line.startswith(f"hesnr score: --hf {path}: transformers ") and "n_layer" in line, line


def test_an_unknown_dtype_is_one_line(exported, tmp_path):
    _, path = exported
    rc, err, _ = _hesnr_inprocess("demo=data/demo", "--hf", path, "--dtype", "float8", "--jsonl", tmp_path / "s.jsonl")
    assert rc == 2
    assert _one_line(err) == "hesnr score: --dtype float8: --hf takes one of float32, bfloat16, float16, float64"


def test_closing_lines_name_a_nan_metric_and_its_reason():
    from megatron_hesnr.scoring.summary import summary_lines

    nan = float("nan")
    rec = {"dataset": "heldout", "metrics": {
        "hesnr": nan, "hesnr_stderr": nan, "he_ppl": nan, "he_ppl_stderr": nan, "ppl": 812.5, "ppl_stderr": 12.25,
        "top1_acc": 0.0125, "top1_acc_stderr": 0.003, "num_tokens": 4000, "num_high_entropy": 0, "num_invalid": 0,
        "num_documents": 12, "threshold": 0.5}}
    one = dict(rec, dataset="one", metrics=dict(rec["metrics"], hesnr=0.25, hesnr_stderr=nan, num_high_entropy=3,
                                                num_documents=1))
    lines = summary_lines([rec, one], "out.jsonl")
    assert lines[0] == ("hesnr score: heldout: HE-SNR nan (no high-entropy token (none of 4000 scored tokens has "
                        "H_k > 0.5)), HE-PPL nan (no high-entropy token (none of 4000 scored tokens has H_k > 0.5)), "
                        "PPL 812.5 ± 12, top-1 0.0125 ± 0.003; 4000 scored tokens, 0 high-entropy; 12 trajectories")
    assert lines[1].startswith("hesnr score: one: HE-SNR 0.25 (no standard error: fewer than 2 trajectories)")
    assert lines[2] == "hesnr score: records in out.jsonl"


def test_demo_summary_mentions_the_export_path():
    """The demo's CLI prints where the HF checkpoints went (--no-hf-export: nothing)."""
    import argparse

    from megatron_hesnr.demo import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args([]).hf_export is True
    assert p.parse_args(["--no-hf-export"]).hf_export is False
    assert Path(REPO / "megatron_hesnr" / "demo" / "hf_export.py").is_file()
