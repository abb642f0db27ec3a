"""A real megatron-core GPTModel (local spec, MoE with EP=2; dense with TP=2) through the hook.

gloo, CPU: megatron-core's "cuda" allocations are mapped to the CPU by the test shim.
The hook's reduced accumulator must equal a reference computed from the same model's
``forward(labels=None)`` logits over every window (gathered over TP) in one rank.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("megatron.core")

import hesnr_integration_helpers as H  # noqa: E402
from distributed_harness import run_world  # noqa: E402

V_TRUE, V_PAD, S = 200, 256, 32


def _gpt(tp, moe):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    kw = dict(num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, moe_token_dispatcher_type="allgather",
              expert_model_parallel_size=2) if moe else {}
    config = TransformerConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                               tensor_model_parallel_size=tp, use_cpu_initialization=True, add_bias_linear=False,
                               hidden_dropout=0.0, attention_dropout=0.0, pipeline_dtype=torch.float32, **kw)
    torch.manual_seed(7)
    spec = get_gpt_layer_local_spec(num_experts=4 if moe else None)
    return GPTModel(config, spec, vocab_size=V_PAD, max_sequence_length=S, position_embedding_type="learned_absolute")


def _reference(model, wset, tp):
    from megatron.core import parallel_state as ps

    from megatron_hesnr import HESNRAccumulator, token_stats
    from megatron_hesnr.evaluation.windows import window_sample

    acc = HESNRAccumulator(num_bins=64)
    with torch.no_grad():
        for idx, w in wset.windows:
            x, y, m = (torch.from_numpy(a)[None] for a in window_sample(*wset.dataset[idx], w, S))
            logits = model(x, torch.arange(S)[None], None, labels=None)  # [1, S, V/TP]
            if tp > 1:
                parts = [torch.empty_like(logits) for _ in range(tp)]
                torch.distributed.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
                logits = torch.cat(parts, dim=-1)
            acc.update(token_stats(logits, y, vocab_size=V_TRUE, impl="torch"), m)
    return acc


# (tp, ep, MoE layers, logits capture); auto: chunked where GPTModel takes output_processor (sequence
# parallelism needs a LayerNorm this CPU setup lacks: tests/test_chunked_stats.py covers it)
LAYOUTS = [(1, 2, True, "labels_none"), (2, 1, False, "output_layer_hook"), (2, 1, False, "auto"), (1, 2, True, "auto")]


def _layout(rank, world, tp, ep, moe, capture):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    data = H.make_dataset(5, n=4, max_len=60)
    data.items = [(t * 3 + 1, m) for t, m in data.items]  # spread ids over the 200-token vocabulary
    data.manifest = {"tokenizer": {"vocab_size": V_TRUE}}
    with H.model_parallel(tensor_model_parallel_size=tp, expert_model_parallel_size=ep):
        with H.schedules_on_cpu():
            model = _gpt(tp, moe)
            cfg = HESNRConfig(datasets=(EvalDataset("d", "d"),), metric=AccumulatorConfig(num_bins=64), impl="torch",
                              window_stride=16,
                              logits_capture=capture)
            args = SimpleNamespace(seq_length=S, padded_vocab_size=V_PAD, iteration=1, skip_train=True, load=None)
            hook = MegatronHESNRHook(cfg, get_args=lambda: args, open_dataset=lambda p: data,
                                     get_wandb_writer=lambda: None)
            model.train()
            out = hook.non_loss_data_func([model])
            assert model.training
            if capture == "auto":
                from megatron_hesnr.evaluation.capture import core_has_output_processor

                want = "chunked" if core_has_output_processor() else "labels_none"
                assert hook.evaluator.capture_line.startswith(f"logits capture {want} "), hook.evaluator.capture_line
            model.eval()
            ref = _reference(model, hook._sets[0][0], tp)
    if rank == world - 1:
        got, want = out["sets"]["d"]["metrics"], ref.compute()
        assert got["num_tokens"] == want["num_tokens"] > 0
        assert got["num_high_entropy"] == want["num_high_entropy"] > 0
        for key in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc", "mean_entropy"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, nan_ok=True), (tp, ep, key)


@pytest.mark.parametrize("tp,ep,moe,capture", LAYOUTS, ids=[f"tp{t}-ep{e}-{'moe' if m else 'dense'}-{c}"
                                                             for t, e, m, c in LAYOUTS])
def test_real_gpt_model_through_the_hook(tp, ep, moe, capture, tmp_path):
    run_world(_layout, 2, tmp_path, tp, ep, moe, capture)
