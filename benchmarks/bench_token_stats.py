#!/usr/bin/env python
"""Per-token statistics of a logits shard: the fused kernel against its baselines.

For every (tokens S, shard width V_local) it measures, in one run and on the same
tensor: reading the logits once (``amax``), ``torch.topk`` alone, a naive PyTorch
implementation (fp32 copy, logsumexp, topk, gather), the chunked PyTorch reference
(``shard_stats_torch``), the fused Triton kernel (default launch and the variants
of ``--variants``: split-row ``splits`` 1..16, the bitonic mode, other tiles),
``token_stats`` end to end with the kernel, megatron-core's
``vocab_parallel_cross_entropy`` (TP=1) and Liger-Kernel's cross-entropy forward
(the nearest single-pass peer; it computes no top-k) when they are installed.
It prints times, peak extra memory and ratios, checks every kernel variant's
records against the reference, prints the best correct kernel variant per size
with the ratios against the goals, and writes everything as JSON (``--json PATH``).

GPU (the issue's grid; about two minutes on an H100/H200):

    python benchmarks/bench_token_stats.py --json bench_token_stats.json

CPU check that it runs (Triton interpreter, tiny sizes, numbers mean nothing; well
under a minute on 2 cores):

    python benchmarks/bench_token_stats.py --quick

Sizes whose logits (or a method's working memory) do not fit on the device are
skipped and reported as such.  Times are CUDA-event medians over ``--repeats``
runs after ``--warmup`` runs (the first one compiles the kernel); peak extra
memory is ``max_memory_allocated`` above what was allocated before the call,
outputs included.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_token_stats")

DEFAULT_TOKENS = (8192, 32768, 131072)
DEFAULT_VOCAB = (151936, 151936 // 8)
#: Extra kernel launches timed beside the default one: ':'-joined tokens
#: ``sN`` (splits), ``select``/``bitonic`` (mode), ``BLOCKxWARPS`` (tile, warps).
DEFAULT_VARIANTS = ("s1", "s2", "s4", "s8", "s16", "bitonic", "512x2", "2048x8")
TARGETS = {"kernel_over_read_once_max": 1.5, "speedup_vs_naive_min": 20.0, "extra_mem_fraction_max": 0.01}
GIB = 2**30
#: ``--quick``: every method and check once, at a size the Triton interpreter does in seconds.
QUICK = {"device": "cpu", "tokens": [16], "vocab": [301], "repeats": 1, "warmup": 0, "variants": ["s2"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available, else cpu (kernel via TRITON_INTERPRET=1)")
    p.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS), help="token counts S")
    p.add_argument("--vocab", type=int, nargs="+", default=list(DEFAULT_VOCAB),
                   help="shard widths V_local (151936 = TP1, 18992 = a TP8 shard)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("-k", type=int, default=10, help="top-k values per token")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--variants", nargs="*", default=None,
                   help="extra kernel launches, ':'-joined tokens sN (splits), select|bitonic, BLOCKxWARPS "
                        f"(default on GPU and CPU: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--methods", nargs="*", default=None,
                   help="subset of methods to run (default: all); see the table's first column")
    p.add_argument("--logit-scale", type=float, default=3.0, help="logits ~ N(0, scale^2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--quick", action="store_true",
                   help="a check that the script runs, not a measurement: CPU (Triton interpreter), "
                        f"S={QUICK['tokens'][0]}, V_local={QUICK['vocab'][0]}, one repeat, one extra variant; "
                        "well under a minute on 2 cores")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


ARGS = parse_args() if __name__ == "__main__" else None

import torch  # noqa: E402  (does not import triton)

if ARGS is not None:
    ARGS.device = ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if ARGS.device == "cpu":
        # triton.jit picks interpreter or compiler when Triton is imported: decide first.
        os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megatron_hesnr.metric.shard_stats import shard_stats_torch  # noqa: E402
from megatron_hesnr.metric.token_stats import token_stats  # noqa: E402
from megatron_hesnr.metric.vocab import VocabShard  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------- methods
def naive_stats(x, labels, k):
    """What one would write first: an fp32 copy of the logits and whole-tensor ops."""
    xf = x.float()
    m = xf.amax(dim=-1)
    lse = torch.logsumexp(xf, dim=-1)
    tgt = xf.gather(1, labels[:, None].clamp(0, x.shape[1] - 1))
    top = torch.topk(xf, k, dim=-1).values
    return m, lse, tgt, top


class MegatronCE:
    """megatron-core ``vocab_parallel_cross_entropy`` at TP=1 on a 1-rank group."""

    def __init__(self, device: str):
        import torch.distributed as dist
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        self._fn = vocab_parallel_cross_entropy
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            import tempfile

            self._store = tempfile.NamedTemporaryFile(prefix="hesnr_bench_pg_", delete=False).name
            os.unlink(self._store)
            dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                    init_method="file://" + self._store, world_size=1, rank=0)
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
        self._ps = parallel_state

    def __call__(self, x, labels):
        # Megatron's layout [s, b, V]; it upcasts to fp32 (a copy for bf16 logits).
        # fp32 logits would be modified in place, so they are cloned outside the timing.
        return self._fn(x.view(x.shape[0], 1, x.shape[1]), labels.view(-1, 1))

    def close(self):
        import torch.distributed as dist

        self._ps.destroy_model_parallel()
        if self._owns_group:
            dist.destroy_process_group()
            if os.path.exists(self._store):
                os.unlink(self._store)


class LigerCE:
    """Liger-Kernel's cross-entropy forward (per-token loss, no gradient written)."""

    def __init__(self, device: str):
        if device != "cuda":
            raise RuntimeError("Liger-Kernel's Triton kernels need CUDA tensors")
        from liger_kernel.transformers.functional import liger_cross_entropy

        self._fn = liger_cross_entropy

    def __call__(self, x, labels):
        # Inputs that do not require grad: the kernel skips writing gradients into x.
        with torch.no_grad():
            return self._fn(x, labels, reduction="none")


def parse_variant(spec: str) -> dict:
    """``"s4:bitonic:2048x8"`` -> keyword arguments of ``shard_stats_triton``."""
    kw = {}
    for tok in spec.lower().split(":"):
        if tok in ("select", "bitonic"):
            kw["mode"] = tok
        elif tok[:1] == "s" and tok[1:].isdigit() and int(tok[1:]) > 0:
            kw["splits"] = int(tok[1:])
        elif tok.count("x") == 1 and all(t.isdigit() for t in tok.split("x")):
            kw["block"], kw["num_warps"] = (int(t) for t in tok.split("x"))
        else:
            raise ValueError(f"--variants: {spec!r}: token {tok!r} is not sN, select, bitonic or BLOCKxWARPS")
    return kw


# ----------------------------------------------------------------------------- timing
def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, repeats, warmup):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_all": times}


def peak_extra_bytes(fn, device):
    """Peak memory above the pre-call allocation, outputs included (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def free_bytes(device):
    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


# ----------------------------------------------------------------------------- one size
def build_methods(args, device, shard, k, peers, kernel_ok):
    """name -> (callable(x, labels), estimated extra bytes for (S, V, itemsize))."""
    fp32 = lambda s, v, isz: 4 * s * v  # noqa: E731
    methods = {
        "read_once": (lambda x, y: x.amax(dim=-1), lambda s, v, isz: 0),
        "torch_topk": (lambda x, y: torch.topk(x, k, dim=-1).values, lambda s, v, isz: s * v * isz // 8),
        "naive_torch": (lambda x, y: naive_stats(x, y, k), lambda s, v, isz: 2 * fp32(s, v, isz)),
        "chunked_reference": (lambda x, y: shard_stats_torch(x, y, shard, k), lambda s, v, isz: 2**30),
    }
    if kernel_ok:
        from megatron_hesnr.metric.kernels.triton_shard_stats import has_tl_topk, shard_stats_triton

        methods["kernel"] = (lambda x, y: shard_stats_triton(x, y, shard, k), lambda s, v, isz: 0)
        for spec in args.variants:
            kw = parse_variant(spec)
            if kw.get("mode") == "bitonic" and not has_tl_topk():
                log.info("variant %s skipped: this Triton has no tl.topk", spec)
                continue
            methods[f"kernel[{spec}]"] = (
                lambda x, y, kw=kw: shard_stats_triton(x, y, shard, k, **kw), lambda s, v, isz: 0)
        methods["token_stats[triton]"] = (
            lambda x, y: token_stats(x, y, k=k, impl="triton"), lambda s, v, isz: 0)
    if "megatron_vocab_parallel_ce" in peers:
        # Megatron makes one fp32 copy and works in place on it (+20 GB at 32K x 151936).
        methods["megatron_vocab_parallel_ce"] = (peers["megatron_vocab_parallel_ce"],
                                                 lambda s, v, isz: fp32(s, v, isz) * 11 // 10)
    if "liger_ce_forward" in peers:
        # One pass per row like ours, a per-token loss out; no fp32 copy.
        methods["liger_ce_forward"] = (peers["liger_ce_forward"], lambda s, v, isz: 8 * s)
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            log.warning("unknown or unavailable methods ignored: %s", sorted(unknown))
        methods = {n: m for n, m in methods.items() if n in args.methods or n == "read_once"}
    return methods


def compare(kern, ref):
    ok = ~torch.isnan(ref.max)
    rel = ((kern.sumexp[ok].double() - ref.sumexp[ok].double()) / ref.sumexp[ok].double()).abs()
    return {
        "max_equal": bool(torch.equal(kern.max[ok], ref.max[ok])),
        "target_equal": bool(torch.equal(kern.target[ok], ref.target[ok])),
        "topk_equal": bool(torch.equal(kern.topk[ok], ref.topk[ok])),
        "nan_rows_equal": bool(torch.equal(torch.isnan(kern.max), ~ok)),
        "sumexp_max_rel_diff": float(rel.max()) if rel.numel() else 0.0,
    }


def run_size(args, device, s, v, dtype, peers, kernel_ok):
    itemsize = torch.finfo(dtype).bits // 8
    logits_bytes = s * v * itemsize
    entry = {"tokens": s, "v_local": v, "dtype": args.dtype, "logits_bytes": logits_bytes, "methods": {}}
    free = free_bytes(device)
    if free is not None and logits_bytes + 2 * GIB > free:
        entry["skipped"] = f"logits need {logits_bytes / GIB:.1f} GiB, {free / GIB:.1f} GiB free"
        log.warning("S=%d V_local=%d skipped: %s", s, v, entry["skipped"])
        return entry
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(s, v, device=device, dtype=dtype, generator=gen)
    x.mul_(args.logit_scale)
    labels = torch.randint(0, v, (s,), device=device, generator=gen)
    shard = VocabShard(0, v, v)
    methods = build_methods(args, device, shard, args.k, peers, kernel_ok)
    results = {}
    for name, (fn, est) in methods.items():
        need = est(s, v, itemsize)
        free = free_bytes(device)
        if free is not None and need + GIB // 2 > free:
            results[name] = {"skipped": f"needs ~{need / GIB:.1f} GiB extra, {free / GIB:.1f} GiB free"}
            log.warning("S=%d V=%d %s skipped: %s", s, v, name, results[name]["skipped"])
            continue
        call = (lambda fn=fn: fn(x.clone(), labels)) if (name.startswith("megatron") and dtype == torch.float32) \
            else (lambda fn=fn: fn(x, labels))
        try:
            r = time_ms(call, device, args.repeats, args.warmup)
            r["peak_extra_bytes"] = peak_extra_bytes(call, device)
        except torch.cuda.OutOfMemoryError as exc:  # estimate was too optimistic
            results[name] = {"skipped": f"out of memory ({str(exc).splitlines()[0]})"}
            log.warning("S=%d V=%d %s: out of memory", s, v, name)
            torch.cuda.empty_cache()
            continue
        except Exception as exc:  # one failing baseline must not cost the whole GPU run
            results[name] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
            log.exception("S=%d V=%d %s failed", s, v, name)
            continue
        results[name] = r
        log.info("S=%d V=%d %-28s %9.3f ms", s, v, name, r["ms"])
    entry["methods"] = results
    if kernel_ok and "kernel" in results and "ms" in results["kernel"]:
        from megatron_hesnr.metric.kernels.triton_shard_stats import shard_stats_triton

        ref = shard_stats_torch(x, labels, shard, args.k)
        entry["check"] = compare(shard_stats_triton(x, labels, shard, args.k), ref)
        for name in methods:
            if name.startswith("kernel[") and "ms" in results.get(name, {}):
                got = shard_stats_triton(x, labels, shard, args.k, **parse_variant(name[len("kernel["):-1]))
                entry.setdefault("variant_checks", {})[name] = compare(got, ref)
    entry["ratios"] = ratios(entry, results, logits_bytes)
    entry["best_kernel"] = best_kernel(entry, logits_bytes)
    del x, labels
    return entry


def ratios(entry, results, logits_bytes):
    def ms(name):
        return results.get(name, {}).get("ms")

    out = {}
    read = ms("read_once")
    if read:
        out["read_bandwidth_GBps"] = logits_bytes / (read * 1e-3) / 1e9
    kern = ms("kernel")
    if kern and read:
        out["kernel_over_read_once"] = kern / read
        out["kernel_bandwidth_fraction"] = read / kern
    for name in results:
        if name.startswith("kernel[") and ms(name) and read:
            out[f"{name}_over_read_once"] = ms(name) / read
    for base in ("naive_torch", "chunked_reference", "torch_topk", "megatron_vocab_parallel_ce", "liger_ce_forward"):
        if kern and ms(base):
            out[f"speedup_vs_{base}"] = ms(base) / kern
    mem = results.get("kernel", {}).get("peak_extra_bytes")
    if mem is not None:
        out["kernel_extra_mem_fraction"] = mem / logits_bytes
    return out


def _equal(check) -> bool:
    return all(v for v in check.values() if isinstance(v, bool)) and check["sumexp_max_rel_diff"] < 1e-5


def best_kernel(entry, logits_bytes):
    """The fastest kernel launch whose records equal the reference, with the goals' ratios."""
    res = entry["methods"]
    checks = dict(entry.get("variant_checks", {}))
    if "check" in entry:
        checks["kernel"] = entry["check"]
    timed = {n: r for n, r in res.items() if (n == "kernel" or n.startswith("kernel[")) and "ms" in r}
    good = {n: r for n, r in timed.items() if n in checks and _equal(checks[n])}
    if not good:
        return {"method": None, "reason": "no kernel launch measured and equal to the reference"
                if timed else "kernel not measured"}
    name = min(good, key=lambda n: good[n]["ms"])
    r = good[name]
    out = {"method": name, "ms": r["ms"]}
    read, naive = res.get("read_once", {}).get("ms"), res.get("naive_torch", {}).get("ms")
    if read:
        out["over_read_once"] = r["ms"] / read
        out["over_read_once<=1.5"] = out["over_read_once"] <= TARGETS["kernel_over_read_once_max"]
    if naive:
        out["speedup_vs_naive"] = naive / r["ms"]
        out["speedup_vs_naive>=20"] = out["speedup_vs_naive"] >= TARGETS["speedup_vs_naive_min"]
    if r.get("peak_extra_bytes") is not None:
        out["extra_mem_fraction"] = r["peak_extra_bytes"] / logits_bytes
        out["extra_mem<=1%"] = out["extra_mem_fraction"] <= TARGETS["extra_mem_fraction_max"]
    return out


def print_best(entries):
    print("\nbest kernel launch per size (equal to the reference; goals: <=1.5x read-once, "
          ">=20x naive, extra memory <=1% of the logits):")
    print(f"  {'S':>7} {'V_local':>8}  {'method':<24} {'ms':>9} {'x read':>7} {'x naive':>8} {'mem %':>7}")
    for e in entries:
        b = e.get("best_kernel") or {"method": None, "reason": e.get("skipped", "not measured")}
        if b["method"] is None:
            print(f"  {e['tokens']:>7} {e['v_local']:>8}  - ({b['reason']})")
            continue

        def num(key, fmt):
            return format(b[key], fmt) if key in b else "-"

        mem = format(100 * b["extra_mem_fraction"], ".3f") if "extra_mem_fraction" in b else "-"
        print(f"  {e['tokens']:>7} {e['v_local']:>8}  {b['method']:<24} {b['ms']:9.3f} "
              f"{num('over_read_once', '7.2f')} {num('speedup_vs_naive', '8.1f')} {mem:>7}")


# ----------------------------------------------------------------------------- report
def fmt_bytes(b):
    if b is None:
        return "-"
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / 2**20:.1f} MiB"


def print_entry(e):
    head = f"S={e['tokens']}  V_local={e['v_local']}  {e['dtype']}  logits {fmt_bytes(e['logits_bytes'])}"
    print("\n" + head)
    if "skipped" in e:
        print(f"  skipped: {e['skipped']}")
        return
    read = e["methods"].get("read_once", {}).get("ms")
    print(f"  {'method':<30} {'ms':>10} {'x read':>8} {'peak extra':>12}")
    for name, r in e["methods"].items():
        if "skipped" in r:
            print(f"  {name:<30} {'skipped: ' + r['skipped']}")
            continue
        rel = f"{r['ms'] / read:8.2f}" if read else "       -"
        print(f"  {name:<30} {r['ms']:10.3f} {rel} {fmt_bytes(r['peak_extra_bytes']):>12}")
    for key, val in e.get("ratios", {}).items():
        print(f"  {key:<40} {val:.4g}")
    if "check" in e:
        print(f"  kernel vs reference: {e['check']}")
    for name, chk in e.get("variant_checks", {}).items():
        bad = [k for k, v in chk.items() if v is False]
        print(f"  {name} vs reference: {'equal' if not bad else 'DIFFERS in ' + ', '.join(bad)}")


def verdicts(entries):
    """The issue's acceptance targets at V_local = 151936, S >= 32K."""
    out = []
    for e in entries:
        if e["v_local"] != 151936 or e["tokens"] < 32768 or "skipped" in e:
            continue
        r = e.get("ratios", {})
        c = e.get("check", {})
        row = {"tokens": e["tokens"]}
        if "kernel_over_read_once" in r:
            row["kernel_over_read_once<=1.5"] = r["kernel_over_read_once"] <= TARGETS["kernel_over_read_once_max"]
        if "speedup_vs_naive_torch" in r:
            row["speedup_vs_naive>=20"] = r["speedup_vs_naive_torch"] >= TARGETS["speedup_vs_naive_min"]
        else:
            row["speedup_vs_naive>=20"] = "naive not measured (" + str(
                e["methods"].get("naive_torch", {}).get("skipped", "not run")) + ")"
        if "kernel_extra_mem_fraction" in r:
            row["extra_mem<=1%"] = r["kernel_extra_mem_fraction"] <= TARGETS["extra_mem_fraction_max"]
        if c:
            row["equal_to_reference"] = _equal(c)
        out.append(row)
    return out


def environment(device):
    import importlib.metadata as md

    env = {"device": device, "python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("triton", "megatron-core", "liger-kernel"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_GiB"] = torch.cuda.get_device_properties(0).total_memory / GIB
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    return env


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda: no CUDA device is visible")
        return 2
    if args.variants is None:
        args.variants = list(DEFAULT_VARIANTS)
    try:
        for spec in args.variants:
            parse_variant(spec)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    dtype = DTYPES[args.dtype]
    from megatron_hesnr.metric.kernels import triton_available

    kernel_ok = triton_available() and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if not kernel_ok:
        log.warning("kernel not measured: Triton missing, or CPU without TRITON_INTERPRET=1")
    peers, not_measured = {}, {}
    for name, cls, pkg in (("megatron_vocab_parallel_ce", MegatronCE, "megatron-core"),
                           ("liger_ce_forward", LigerCE, "liger-kernel")):
        if args.methods is not None and name not in args.methods:
            continue
        try:
            peers[name] = cls(device)
        except ImportError as exc:
            not_measured[name] = f"{pkg} not installed ({exc})"
        except Exception as exc:  # e.g. process-group setup, or no CUDA: measure everything else
            not_measured[name] = f"{type(exc).__name__}: {exc}"
        if name in not_measured:
            log.warning("%s not measured: %s", name, not_measured[name])
    env = environment(device)
    log.info("environment: %s", env)
    entries = []

    def result(complete):
        return {"environment": env, "k": args.k, "repeats": args.repeats, "targets": TARGETS,
                "variants": args.variants, "not_measured": not_measured, "complete": complete,
                "results": entries, "verdicts": verdicts(entries),
                "best_kernel": [{"tokens": e["tokens"], "v_local": e["v_local"], **(e.get("best_kernel") or {})}
                                for e in entries]}

    def write(complete):
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result(complete), indent=1))

    try:
        for s in args.tokens:
            for v in args.vocab:
                entry = run_size(args, device, s, v, dtype, peers, kernel_ok)
                entries.append(entry)
                print_entry(entry)
                write(complete=False)  # a run stopped by a time budget keeps the sizes done
                if device == "cuda":
                    torch.cuda.empty_cache()
    finally:
        if "megatron_vocab_parallel_ce" in peers:
            peers["megatron_vocab_parallel_ce"].close()
    final = result(complete=True)
    print_best(entries)
    print("\nverdicts (V_local=151936, S>=32K):")
    for row in final["verdicts"]:
        print("  " + json.dumps(row))
    if args.json:
        write(complete=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
