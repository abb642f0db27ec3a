"""GPU check of the Megatron integration: a real MoE GPTModel (and HybridModel) through the hook.

Run on one GPU (megatron-core >= 0.16; 0.19 adds the output_processor path)::

    torchrun --nproc-per-node 1 benchmarks/gpu_check_integration.py --out /tmp/hesnr_gpu.json

What it does, side by side in one process:

1. builds megatron-core's ``GPTModel`` with MoE layers from the *local* layer spec
   (no Transformer Engine), bf16, wrapped in ``Float16Module`` like Megatron-LM does;
2. runs the HE-SNR pass (:class:`HESNRPass`) through ``get_forward_backward_func``
   over synthetic trajectories (some longer than --seq-length: sliding windows);
3. recomputes the same windows as a reference: ``forward(labels=None)`` logits ->
   ``token_stats(impl="torch")`` -> accumulator, and compares counts and metrics, and the
   per-trajectory counts of the pass's table (trajectory indices on the device);
4. times the plain evaluation step (Megatron's forward with labels -> per-token loss,
   as ``evaluate()`` runs it) and the hook pass on the same windows, and reports
   time and peak-memory ratios;
5. with ``--both`` (the default), runs the pass padded to --seq-length and length-bucketed
   on the same windows and reports pass time and peak memory of each and their ratios,
   and whether both give the same metrics (``--bucketed`` / ``--padded`` time one mode);
6. does the same for ``HybridModel`` (``*E`` pattern) when this megatron-core has it
   and it builds without Transformer Engine (else says why it was skipped).

At 32K, as the integration check of the bucketing::

    torchrun --nproc-per-node 1 benchmarks/gpu_check_integration.py --seq-length 32768 --both

``--cpu`` runs a tiny version on CPU/gloo (a dry run of this script, not a measurement).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_hesnr import HESNRAccumulator, token_stats  # noqa: E402
from megatron_hesnr.metric.accumulator import SCALAR_FIELDS  # noqa: E402
from megatron_hesnr.evaluation.capture import LogitsCapture, resolve_capture  # noqa: E402
from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig  # noqa: E402
from megatron_hesnr.evaluation.eval_pass import HESNRPass, plan_set  # noqa: E402
from megatron_hesnr.evaluation.guard import training_state_preserved  # noqa: E402
from megatron_hesnr.evaluation.windows import window_sample  # noqa: E402


class SyntheticTrajectories:
    """Random token trajectories with a category mask (the PreparedDataset interface)."""

    def __init__(self, n, seq_length, vocab_size, seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            length = int(rng.integers(seq_length // 4, int(seq_length * 2.5)))
            tokens = rng.integers(0, vocab_size, size=length).astype(np.int64)
            # Action spans of a few dozen tokens between thought / observation spans.
            mask = np.zeros(length, dtype=np.uint8)
            pos = 1
            while pos < length:
                span = int(rng.integers(8, 64))
                mask[pos:pos + span] = rng.choice([1, 2, 3], p=[0.4, 0.3, 0.3])
                pos += span
            self.items.append((tokens, mask))
        self.manifest = {"tokenizer": {"vocab_size": vocab_size}}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _cpu_schedule_shim():
    # Only for --cpu (a dry run): megatron-core's "cuda" allocations go to the CPU.
    from megatron_hesnr.megatron_lm.cpu_shim import schedules_on_cpu

    global _CPU_SHIM  # keep it referenced: a collected context manager would undo itself
    _CPU_SHIM = schedules_on_cpu()
    _CPU_SHIM.__enter__()


def init(args):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    backend = "gloo" if args.cpu else "nccl"
    if not args.cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend)
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    ps.initialize_model_parallel(tensor_model_parallel_size=args.tp)
    if not args.cpu:
        model_parallel_cuda_manual_seed(1234)
    else:
        _cpu_schedule_shim()


def transformer_config(args, mtp=False):
    from megatron.core.transformer import TransformerConfig

    kw = dict(
        num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=4 * args.hidden,
        num_attention_heads=args.heads, num_moe_experts=args.experts, moe_router_topk=2,
        moe_ffn_hidden_size=2 * args.hidden, moe_token_dispatcher_type="allgather" if args.cpu else "alltoall", moe_grouped_gemm=False,
        moe_aux_loss_coeff=1e-3, add_bias_linear=False, normalization="RMSNorm", gated_linear_unit=True,
        tensor_model_parallel_size=args.tp, sequence_parallel=args.tp > 1,
        bf16=not args.cpu, params_dtype=torch.float32 if args.cpu else torch.bfloat16,
        pipeline_dtype=torch.float32 if args.cpu else torch.bfloat16,
        use_cpu_initialization=args.cpu, hidden_dropout=0.0, attention_dropout=0.0,
    )
    if mtp:
        kw["mtp_num_layers"] = 1
    return TransformerConfig(**kw)


def build_gpt(args, mtp=False):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.module import Float16Module

    config = transformer_config(args, mtp=mtp)
    spec = get_gpt_layer_local_spec(num_experts=args.experts, moe_grouped_gemm=False)
    kw = {}
    if mtp:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

        kw["mtp_block_spec"] = get_gpt_mtp_block_spec(config, spec, use_transformer_engine=False)
    model = GPTModel(config, spec, vocab_size=args.padded_vocab, max_sequence_length=args.seq_length,
                     position_embedding_type="learned_absolute" if args.cpu else "rope", **kw)
    if not args.cpu:
        model = Float16Module(config, model.cuda())
    return model, config


def build_hybrid(args):
    from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec
    from megatron.core.models.hybrid.hybrid_model import HybridModel
    from megatron.core.transformer.module import Float16Module

    config = transformer_config(args)
    model = HybridModel(config, hybrid_stack_spec, vocab_size=args.padded_vocab,
                        max_sequence_length=args.seq_length, hybrid_layer_pattern="*E" * (args.layers // 2),
                        position_embedding_type="rope")
    if not args.cpu:
        model = Float16Module(config, model.cuda())
    return model, config


def topology(device):
    from megatron_hesnr.megatron_lm import topology_from_parallel_state

    return topology_from_parallel_state(device=device)


def sync(args):
    if not args.cpu:
        torch.cuda.synchronize()


def plain_eval(model, wset, args, fb, device):
    """Megatron's evaluation step: forward with labels -> per-token loss -> masked sum."""
    S = args.seq_length
    batches = []
    for idx, w in wset.windows:
        x, y, m = window_sample(*wset.dataset[idx], w, S)
        batches.append((torch.from_numpy(x)[None].to(device), torch.from_numpy(y)[None].to(device),
                        torch.from_numpy(m)[None].to(device)))
    pos = torch.arange(S, device=device)[None]

    def forward_step(it, m):
        x, y, mask = next(it)
        out = m(x, pos, None, labels=y)

        def loss_func(output):
            lm = (output.float() * (mask != 0)).sum()
            n = (mask != 0).sum().to(torch.int)
            return lm, n, {"lm loss": torch.stack([lm.detach(), n.float()])}

        return out, loss_func

    with torch.no_grad():
        fb(forward_step_func=forward_step, data_iterator=[iter(batches)], model=[model],
           num_microbatches=len(batches), seq_length=S, micro_batch_size=1, forward_only=True)


def reference(model, wset, args, cfg, device):
    S = args.seq_length
    acc = HESNRAccumulator(dataclasses.replace(cfg.metric, num_documents=len(wset.dataset)))
    pos = torch.arange(S, device=device)[None]
    kw = {"fp32_output": False} if not args.cpu else {}
    with torch.no_grad():
        for idx, w in wset.windows:
            x, y, m = (torch.from_numpy(a)[None].to(device) for a in window_sample(*wset.dataset[idx], w, S))
            logits = model(x, pos, None, labels=None, **kw)
            acc.update(token_stats(logits, y, k=cfg.metric.k, vocab_size=args.vocab, impl="torch"), m,
                       torch.full_like(m, idx))
    return acc


def trajectory_counts_equal(acc, ref) -> bool:
    """Per-trajectory token counts of the pass's table == the reference's (exact)."""
    cols = [SCALAR_FIELDS.index("num_tokens"), SCALAR_FIELDS.index("num_invalid")]
    return acc.trajectories is not None and torch.equal(acc.trajectories[..., cols].cpu(),
                                                        ref.trajectories[..., cols].cpu())


def timed(fn, args, repeat):
    times, peaks = [], []
    for _ in range(repeat):
        if not args.cpu:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync(args)
        t0 = time.perf_counter()
        fn()
        sync(args)
        times.append(time.perf_counter() - t0)
        peaks.append((torch.cuda.max_memory_allocated() - base) if not args.cpu else 0)
    return min(times), max(peaks)


def check_model(name, model, args, mtp=False):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = torch.device("cpu") if args.cpu else torch.device("cuda", torch.cuda.current_device())
    data = SyntheticTrajectories(args.trajectories, args.seq_length, args.vocab)
    cfg = HESNRConfig(datasets=(EvalDataset("synthetic", "-"),), impl=args.impl, long_policy="window",
                      pad_to_seq_length=args.mode == "padded")
    wset = plan_set("synthetic", data, args.seq_length, "window", cfg.stride_for(args.seq_length))
    fb = get_forward_backward_func()
    strategy = resolve_capture(model, "auto", mtp=mtp)

    def make_pass(config):
        return HESNRPass(config, vocab_size=args.vocab, seq_length=args.seq_length, topology=topology(device),
                         forward_backward_func=fb, capture=LogitsCapture(strategy),
                         padded_vocab_size=args.padded_vocab)

    hesnr_pass = make_pass(cfg)
    out = {"model": name, "capture": strategy, "windows": len(wset.windows), **wset.summary(),
           "mode": "padded" if cfg.pad_to_seq_length else "bucketed"}
    model.train()
    with training_state_preserved([model]):
        acc = hesnr_pass.run([model], wset)
        ref = reference(model, wset, args, cfg, device)
    assert model.training, "model mode not restored"
    got, want = acc.compute(), ref.compute()
    out["hook"] = {k: got[k] for k in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "num_tokens",
                                        "num_high_entropy", "num_invalid", "num_documents", "hesnr_stderr")}
    out["reference"] = {k: want[k] for k in out["hook"]}
    out["max_rel_diff"] = max(
        abs(got[k] - want[k]) / max(abs(want[k]), 1e-30)
        for k in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc")
        if not (math.isnan(got[k]) and math.isnan(want[k]))
    )
    out["counts_equal"] = all(got[k] == want[k] for k in ("num_tokens", "num_invalid"))
    out["trajectory_counts_equal"] = trajectory_counts_equal(acc, ref)
    out["high_entropy_count_diff"] = got["num_high_entropy"] - want["num_high_entropy"]

    # Timing: plain evaluation step vs the hook's pass on the same windows.
    model.eval()

    def run_hook():
        with training_state_preserved([model]):
            hesnr_pass.run([model], wset)

    plain_eval(model, wset, args, fb, device)  # warm-up
    run_hook()
    t_plain, m_plain = timed(lambda: plain_eval(model, wset, args, fb, device), args, args.repeat)
    t_hook, m_hook = timed(run_hook, args, args.repeat)
    out["time_plain_eval_s"] = t_plain
    out["time_hook_s"] = t_hook
    out["time_ratio_hook_over_plain"] = t_hook / t_plain
    out["peak_mem_plain_eval_bytes"] = m_plain
    out["peak_mem_hook_bytes"] = m_hook
    out["peak_mem_ratio_hook_over_plain"] = (m_hook / m_plain) if m_plain else None
    out["plan"] = hesnr_pass.plan.summary()
    if args.mode == "both":
        out["padded_vs_bucketed"] = padded_vs_bucketed(model, wset, cfg, make_pass, args)
    model.train()
    return out


def padded_vs_bucketed(model, wset, cfg, make_pass, args) -> dict:
    """The same windows padded to --seq-length and length-bucketed: time, peak memory, metrics."""
    res = {}
    for mode in ("padded", "bucketed"):
        p = make_pass(dataclasses.replace(cfg, pad_to_seq_length=mode == "padded"))

        def run(p=p):
            with training_state_preserved([model]):
                res[mode + "_metrics"] = p.run([model], wset).compute()

        run()  # warm-up (new shapes)
        t, m = timed(run, args, args.repeat)
        res[f"time_{mode}_s"], res[f"peak_mem_{mode}_bytes"], res[f"plan_{mode}"] = t, m, p.plan.summary()
    pm, bm = res.pop("padded_metrics"), res.pop("bucketed_metrics")
    res["time_ratio_padded_over_bucketed"] = res["time_padded_s"] / res["time_bucketed_s"]
    res["peak_mem_ratio_padded_over_bucketed"] = (res["peak_mem_padded_bytes"] / res["peak_mem_bucketed_bytes"]
                                                  if res["peak_mem_bucketed_bytes"] else None)
    res["counts_equal"] = all(pm[k] == bm[k] for k in ("num_tokens", "num_invalid"))
    res["high_entropy_count_diff"] = bm["num_high_entropy"] - pm["num_high_entropy"]
    res["max_rel_diff"] = max(abs(bm[k] - pm[k]) / max(abs(pm[k]), 1e-30)
                              for k in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc")
                              if not (math.isnan(bm[k]) and math.isnan(pm[k])))
    return res


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="tiny dry run on CPU/gloo")
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=151643, help="true tokenizer vocabulary")
    p.add_argument("--padded-vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--trajectories", type=int, default=6)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--impl", default="auto")
    p.add_argument("--mtp", action="store_true", help="also check a GPTModel with one MTP layer")
    p.add_argument("--out", default=None, help="write the JSON summary here")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--both", dest="mode", action="store_const", const="both",
                      help="also time the pass padded vs length-bucketed on the same windows (default)")
    mode.add_argument("--bucketed", dest="mode", action="store_const", const="bucketed",
                      help="check and time the length-bucketed pass only")
    mode.add_argument("--padded", dest="mode", action="store_const", const="padded",
                      help="check and time the pass padded to --seq-length only (--hesnr-pad-to-seq-length)")
    p.set_defaults(mode="both")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.cpu:
        args.seq_length, args.vocab, args.padded_vocab = min(args.seq_length, 64), 1000, 1024
        args.hidden, args.heads, args.trajectories, args.repeat = 64, 4, 3, 1
    init(args)
    torch.manual_seed(0)
    import megatron.core

    results = {"torch": torch.__version__, "megatron_core": getattr(megatron.core, "__version__", "?"),
               "device": "cpu" if args.cpu else torch.cuda.get_device_name(), "seq_length": args.seq_length,
               "checks": []}
    model, _ = build_gpt(args)
    results["checks"].append(check_model("GPTModel+MoE (local spec)", model, args))
    del model
    if args.mtp:
        try:
            model, _ = build_gpt(args, mtp=True)
            results["checks"].append(check_model("GPTModel+MoE+MTP", model, args, mtp=True))
            del model
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            results["checks"].append({"model": "GPTModel+MoE+MTP", "skipped": f"{type(exc).__name__}: {exc}"})
    try:
        model, _ = build_hybrid(args)
        results["checks"].append(check_model("HybridModel *E", model, args))
        del model
    except Exception as exc:  # noqa: BLE001
        results["checks"].append({"model": "HybridModel *E", "skipped": f"{type(exc).__name__}: {exc}"})
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    ok = all(c.get("skipped") or (c["counts_equal"] and c["trajectory_counts_equal"] and c["max_rel_diff"] < 1e-4
                                  and c.get("padded_vs_bucketed", {}).get("counts_equal", True))
             for c in results["checks"])
    torch.distributed.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
