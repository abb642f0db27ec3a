#!/usr/bin/env python
"""Peak host memory and time of one HE-SNR pass: the whole logits (``full``) vs the chunked capture.

One measurement (one mode per process, so that an outside ``/usr/bin/time -v`` can measure it too)::

    python benchmarks/bench_logits_memory.py --mode chunked --seq-length 8192 --vocab-size 129280 \\
        [--tp 1|2] [--chunk C|auto] --json OUT

runs the real ``HESNRPass`` through megatron-core's forward-only schedule (``get_forward_backward_func``)
on a real ``GPTModel`` (megatron-core >= 0.18, Python 3.12 / core 0.19.2 here; fp32, hidden 64, one
MLP-only layer: attention's ``s x s`` scores would dominate both modes and are not what is measured)
over one sequence of N tokens, and writes ``{"mode", "seq_length", "vocab_size", "tp", "chunk",
"seconds", "peak_rss_bytes", "rss_before_pass_bytes", "metrics"}``.  ``full`` is
``--hesnr-logits-capture output_processor`` (the micro-batch's logits ``[N, V/TP]`` out of the model),
``chunked`` the chunked capture (``chunk``: positions per chunk as resolved).  ``peak_rss_bytes`` is
``resource.getrusage`` of the worker process (its whole life: imports and model included, which both
modes share); ``--tp 2`` starts two gloo worker processes and reports the larger rank.

The allocator: glibc raises its mmap threshold to the size of the largest block freed so far (up to
32 MiB), after which the chunks' freed buffers of a few MiB stay in the heap and the process's resident
set grows chunk after chunk (seen here: 8192 tokens in chunks of 64 positions, 7.9 GB instead of 1.0 GB)
although nothing is held.  A GPU's caching allocator reuses a freed block of the same size, so by
default (``--malloc fixed``) the workers of both modes run with ``MALLOC_MMAP_THRESHOLD_=1048576``
(blocks above 1 MiB go back to the system when freed); ``--malloc default`` measures glibc as it comes.

``--table`` runs a grid (every cell its own process, one after the other) and prints full vs chunked
side by side: peak RSS, its growth over the pre-pass RSS, seconds, the ratios and whether the metrics
agree to 1e-6.  ``--quick``: a small grid, a check of the script (tests/test_bench_quick.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
#: ``--malloc fixed``: glibc's mmap threshold for the workers (bytes).
MMAP_THRESHOLD = 2**20
sys.path.insert(0, str(HERE.parent.parent))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _gpt(vocab: int, seq: int, tp: int, dtype):
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

    config = TransformerConfig(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                               tensor_model_parallel_size=tp, use_cpu_initialization=True, add_bias_linear=False,
                               hidden_dropout=0.0, attention_dropout=0.0, pipeline_dtype=dtype, params_dtype=dtype,
                               bf16=dtype == torch.bfloat16, init_method_std=0.5)
    local = get_gpt_layer_local_spec()
    sub = local.submodules
    spec = type(local)(module=local.module, submodules=TransformerLayerSubmodules(
        pre_mlp_layernorm=sub.pre_mlp_layernorm, mlp=sub.mlp, mlp_bda=sub.mlp_bda))
    torch.manual_seed(11)
    return GPTModel(config, spec, vocab_size=vocab, max_sequence_length=seq, position_embedding_type="learned_absolute")


def _trajectory(n: int, vocab: int):
    import numpy as np

    rng = np.random.default_rng(5)
    tokens = rng.integers(0, vocab, n + 1).astype(np.int64)
    mask = rng.choice(np.array([0, 1, 1, 2, 3], dtype=np.uint8), n + 1)
    mask[0] = 0
    return tokens, mask


def worker(args, rank: int, world: int, port: int) -> dict:
    """One rank's measurement (gloo group of ``world`` processes)."""
    import torch

    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.data.memory import MemoryDataset
    from megatron_hesnr.evaluation.chunked_stats import auto_chunk_positions
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.eval_pass import plan_set
    from megatron_hesnr.megatron_lm.cpu_shim import schedules_on_cpu
    from megatron_hesnr.megatron_lm.single_pass import run_pass

    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from megatron.core import parallel_state as ps

    n, vocab, tp = args.seq_length, args.vocab_size, args.tp
    cuda = args.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    with contextlib.nullcontext() if cuda else schedules_on_cpu():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp)
        model = _gpt(vocab, n, tp, dtype).eval()
        if cuda:
            model.cuda()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        capture = "output_processor" if args.mode == "full" else "chunked"
        cfg = HESNRConfig(datasets=(EvalDataset("bench", "bench"),), logits_capture=capture, impl="torch",
                          logits_chunk="auto" if args.mode == "full" else args.chunk,
                          metric=AccumulatorConfig(num_bins=64))
        wset = plan_set("bench", MemoryDataset([_trajectory(n, vocab)], vocab), n, "window", n // 2)
        before = _rss_bytes()
        gpu_before = torch.cuda.memory_allocated() if cuda else None
        t0 = time.perf_counter()
        acc, _plan = run_pass([model], wset, cfg, vocab=vocab, padded_vocab=vocab, seq_length=n)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = {"peak_gpu_bytes": torch.cuda.max_memory_allocated(), "gpu_bytes_before_pass": gpu_before} if cuda else {}
    chunk = None
    if args.mode == "chunked":
        chunk = auto_chunk_positions(1, vocab // tp, dtype.itemsize) if args.chunk == "auto" else int(args.chunk)
    return {"mode": args.mode, "seq_length": n, "vocab_size": vocab, "tp": tp, "chunk": chunk,
            "dtype": args.dtype, "device": args.device, "seconds": seconds, "peak_rss_bytes": peak,
            "rss_before_pass_bytes": before, **gpu, "metrics": acc.compute() if rank == world - 1 else None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args) -> dict:
    """One measurement: ``--tp`` worker processes of this script; the larger rank's figures."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for rank in range(args.tp):
            cmd = [sys.executable, str(HERE), "--_worker", str(rank), "--_port", str(port), "--_out",
                   f"{tmp}/{rank}.json", *_cell_args(args)]
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            if args.malloc == "fixed":
                env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
            procs.append(subprocess.Popen(cmd, env=env))
        rcs = [p.wait() for p in procs]
        if any(rcs):
            raise SystemExit(f"bench_logits_memory: a worker failed (exit codes {rcs})")
        ranks = [json.loads(Path(f"{tmp}/{r}.json").read_text()) for r in range(args.tp)]
    out = dict(ranks[-1])
    out["seconds"] = max(r["seconds"] for r in ranks)
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ranks)
    for key in ("rss_before_pass_bytes", "peak_gpu_bytes", "gpu_bytes_before_pass"):
        if key in ranks[0]:
            out[key] = max(r[key] for r in ranks)
    out["peak_rss_bytes_by_rank"] = [r["peak_rss_bytes"] for r in ranks]
    out["malloc"] = args.malloc
    return out


def _cell_args(args) -> list[str]:
    return ["--mode", args.mode, "--seq-length", str(args.seq_length), "--vocab-size", str(args.vocab_size),
            "--tp", str(args.tp), "--chunk", str(args.chunk), "--threads", str(args.threads), "--malloc", args.malloc,
            "--device", args.device, "--dtype", args.dtype]


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest relative difference of the float metrics (both NaN: equal)."""
    worst = 0.0
    for key, x in a.items():
        if isinstance(x, dict):
            worst = max(worst, max_rel_diff(x, b[key]))
        elif isinstance(x, float):
            y = b[key]
            if math.isnan(x) and math.isnan(y):
                continue
            worst = max(worst, abs(x - y) / max(abs(y), 1e-300) if x != y else 0.0)
    return worst


def table(args) -> list[dict]:
    gib = 2**30
    rows = []
    peak, base = (("peak_gpu_bytes", "gpu_bytes_before_pass") if args.device == "cuda"
                  else ("peak_rss_bytes", "rss_before_pass_bytes"))
    size = 2 if args.dtype == "bf16" else 4
    print(f"one HE-SNR pass (HESNRPass, megatron-core forward-only schedule, GPTModel {args.dtype} hidden 64) on "
          f"{args.device}, vocabulary {args.vocab_size}; peak = {peak}, +pass = peak - {base}")
    print(f"{'N':>6} {'TP':>2} {'chunk':>6} | {'full peak':>9} {'+pass':>6} {'s':>6} | {'chunked peak':>12} "
          f"{'+pass':>6} {'s':>6} | {'saved':>6} {'logits':>7} {'time ratio':>10} | metrics")
    for n in args.seq_lengths:
        for tp in args.tps:
            cell = argparse.Namespace(**{**vars(args), "seq_length": n, "tp": tp, "mode": "full", "chunk": "auto"})
            full = measure(cell)
            rows.append(full)
            for chunk in args.chunks:
                got = measure(argparse.Namespace(**{**vars(cell), "mode": "chunked", "chunk": chunk}))
                rows.append(got)
                logits = n * args.vocab_size // tp * size
                diff = max_rel_diff(got["metrics"], full["metrics"])
                print(f"{n:>6} {tp:>2} {got['chunk']:>6} | {full[peak] / gib:>8.2f}G "
                      f"{(full[peak] - full[base]) / gib:>5.2f}G {full['seconds']:>6.2f} | "
                      f"{got[peak] / gib:>11.2f}G {(got[peak] - got[base]) / gib:>5.2f}G {got['seconds']:>6.2f} | "
                      f"{(full[peak] - got[peak]) / gib:>5.2f}G {logits / gib:>6.2f}G "
                      f"{got['seconds'] / full['seconds']:>10.2f} | "
                      f"max rel diff {diff:.1e}, equal {diff <= args.rtol}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("full", "chunked"))
    p.add_argument("--seq-length", type=int)
    p.add_argument("--vocab-size", type=int, default=129_280)
    p.add_argument("--tp", type=int, choices=(1, 2), default=1)
    p.add_argument("--chunk", default="auto", help="positions per chunk (chunked mode), or auto")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the pass on the GPU, its peak is torch.cuda.max_memory_allocated (TP 1)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--rtol", type=float, default=1e-6, help="metrics agree when within this relative difference")
    p.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                   help="fixed: the workers run with MALLOC_MMAP_THRESHOLD_=1 MiB (see the module docstring)")
    p.add_argument("--json", help="write the measurement (or, with --table, all of them) here")
    p.add_argument("--table", action="store_true", help="full vs chunked over --seq-lengths x --tps x --chunks")
    p.add_argument("--seq-lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--tps", type=int, nargs="+", default=[1, 2])
    p.add_argument("--chunks", nargs="+", default=["256", "auto"])
    p.add_argument("--quick", action="store_true", help="a small table (a check of the script)")
    p.add_argument("--_worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk != "auto" and (not args.chunk.isdigit() or int(args.chunk) < 1):
        p.error(f"--chunk: a positive number of positions or auto, got {args.chunk!r}")
    if args._worker is not None:
        out = worker(args, args._worker, args.tp, args._port)
        Path(args._out).write_text(json.dumps(out))
        return 0
    if args.quick:
        args.table, args.seq_lengths, args.vocab_size, args.tps, args.chunks = True, [512], 4096, [2], ["64"]
    if args.table:
        rows = table(args)
        ok = all(max_rel_diff(r["metrics"], f["metrics"]) <= args.rtol for r, f in _pairs(rows))
        print(f"metrics of every chunked pass equal the full pass's to {args.rtol:g}: {ok}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0 if ok else 1
    if args.mode is None or args.seq_length is None:
        p.error("give --mode and --seq-length (or --table / --quick)")
    out = measure(args)
    print(json.dumps({k: v for k, v in out.items() if k != "metrics"}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _pairs(rows: list[dict]):
    full = None
    for r in rows:
        if r["mode"] == "full":
            full = r
        else:
            yield r, full


if __name__ == "__main__":
    raise SystemExit(main())
