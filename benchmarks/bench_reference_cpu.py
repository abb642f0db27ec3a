"""CPU: the chunked PyTorch reference next to a naive full-fp32 implementation.

Prints time and peak extra memory of, measured side by side in one run:
  read-once  -- logits.amax(-1): the floor of any statistic that reads the logits
  naive      -- whole-tensor fp32 copy, log-softmax, top-k (what one writes first)
  reference  -- megatron_hesnr.token_stats(impl="torch"): chunked, one fp32 chunk at a time

    python benchmarks/bench_reference_cpu.py                 # S=8192, V=151936, bf16
    python benchmarks/bench_reference_cpu.py --tokens 1024 --json out.json
    python benchmarks/bench_reference_cpu.py --quick        # that it runs: 256 x 32000, one repeat
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

import megatron_hesnr as mh  # noqa: E402


def naive_stats(logits: torch.Tensor, labels: torch.Tensor, k: int):
    z = logits.float()  # a full fp32 copy of the logits
    logp = torch.log_softmax(z, dim=-1)
    target = logp.gather(-1, labels[:, None]).squeeze(-1)
    top = torch.topk(z, k, dim=-1).values
    q = torch.softmax(top, dim=-1)
    entropy = -(q * torch.log(q)).sum(-1)
    return target, entropy, top[:, -1] <= z.gather(-1, labels[:, None]).squeeze(-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true",
                    help="check that it runs, not a measurement: --tokens 256 --vocab 32000 --repeats 1")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.vocab, args.repeats = 256, 32000, 1
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = (torch.randn(args.tokens, args.vocab) * 3).to(dtype)
    labels = torch.randint(0, args.vocab, (args.tokens,))
    size = logits.numel() * logits.element_size()
    print(f"S={args.tokens} V={args.vocab} {args.dtype}: logits {size / 2**30:.2f} GiB, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    rows = {}
    for name, fn in (
        ("read-once", lambda: logits.amax(dim=-1)),
        ("naive", lambda: naive_stats(logits, labels, 10)),
        ("reference", lambda: mh.token_stats(logits, labels, impl="torch")),
    ):
        sec, peak, out = measure(fn, repeats=args.repeats)
        rows[name] = {"seconds": sec, "peak_extra_bytes": peak}
        del out
    ref_time = rows["read-once"]["seconds"]
    print(f"{'path':<10} {'time s':>9} {'x read-once':>12} {'peak extra':>12} {'x logits':>9}")
    for name, r in rows.items():
        r["x_read_once"] = r["seconds"] / ref_time
        r["x_logits_size"] = r["peak_extra_bytes"] / size
        print(f"{name:<10} {r['seconds']:>9.3f} {r['x_read_once']:>12.1f} "
              f"{r['peak_extra_bytes'] / 2**20:>10.0f}Mi {r['x_logits_size']:>9.3f}")
    naive, ref = rows["naive"], rows["reference"]
    print(f"reference vs naive: time {ref['seconds'] / naive['seconds']:.2f}x, "
          f"peak extra memory {ref['peak_extra_bytes'] / max(1, naive['peak_extra_bytes']):.3f}x")
    if args.json:
        args.json.write_text(json.dumps({"tokens": args.tokens, "vocab": args.vocab, "dtype": args.dtype,
                                         "logits_bytes": size, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
