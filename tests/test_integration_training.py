"""The hook never perturbs training: identical losses with and without it (gloo, TP=2).

A tiny vocab-parallel LM with dropout trains for a few steps through megatron-core's
real forward-backward schedule; data are drawn from NumPy's global RNG each step.
Every other step the hook runs as Megatron's evaluate() calls it.  The model draws
from torch, NumPy and Python RNGs in eval mode, so only a hook that restores every
RNG state (and the model's mode) leaves the losses bit-identical; a negative control
with the restoring switched off shows the test can fail.
"""
from __future__ import annotations

import contextlib
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("megatron.core")

import hesnr_integration_helpers as H  # noqa: E402
from distributed_harness import run_world  # noqa: E402


def _train(hook, steps=6):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = H.TinyLM(H.transformer_config(tp=2), H.full_weights(), dropout=0.2, eval_noise=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    fb = get_forward_backward_func()
    positions = torch.arange(H.SEQ).unsqueeze(0).expand(2, H.SEQ)
    losses = []
    for it in range(1, steps + 1):
        tokens = torch.from_numpy(np.random.randint(0, H.VOCAB, size=(2, H.SEQ + 1)))

        def forward_step(data_iterator, m):
            x, y = next(data_iterator)
            out = m(x, positions, None, labels=y)

            def loss_func(output):
                loss = output.float().sum()
                n = torch.tensor(output.numel(), dtype=torch.int)
                return loss, n, {"lm loss": torch.stack([loss.detach(), n.float()])}

            return out, loss_func

        opt.zero_grad()
        with H.schedules_on_cpu():
            out = fb(forward_step_func=forward_step, data_iterator=iter([(tokens[:, :-1], tokens[:, 1:])]),
                     model=[model], num_microbatches=1, seq_length=H.SEQ, micro_batch_size=2, forward_only=False)
        opt.step()
        losses.append(float(out[0]["lm loss"][0]))
        if hook is not None and it % 2 == 0:
            # What Megatron's evaluate() does around non_loss_data_func.
            hook_args.curr_iteration = it - 1  # as Megatron's loop leaves it at evaluation time
            model.eval()
            with torch.no_grad(), H.schedules_on_cpu():
                hook.non_loss_data_func([model])
            model.train()
            assert all(m.training for m in model.modules())
    return losses


hook_args = SimpleNamespace(seq_length=H.SEQ, padded_vocab_size=H.PADDED_VOCAB, curr_iteration=0,
                            skip_train=False, save=None, consumed_train_samples=0)


def _world(rank, world):
    import warnings

    warnings.filterwarnings("ignore")
    import megatron_hesnr.megatron_lm.hook as hook_mod
    from megatron_hesnr.metric.accumulator import AccumulatorConfig
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig

    sets = {"s": H.make_dataset(3, n=3)}

    def make_hook():
        cfg = HESNRConfig(datasets=(EvalDataset("s", "s"),), eval_interval=2, impl="torch",
                          metric=AccumulatorConfig(num_bins=16))
        return hook_mod.MegatronHESNRHook(cfg, get_args=lambda: hook_args, open_dataset=sets.__getitem__,
                                          get_wandb_writer=lambda: None)

    with H.model_parallel(tensor_model_parallel_size=2):
        plain = _train(None)
        hook = make_hook()
        with_hook = _train(hook)
        assert hook._last_iteration == 6  # it ran at steps 2, 4, 6
        assert plain == with_hook, (plain, with_hook)

        # Negative control: the same pass without restoring the RNG states.
        @contextlib.contextmanager
        def not_restoring(models):
            for m in models:
                m.eval()
            with torch.no_grad():
                yield None

        import megatron_hesnr.evaluation.evaluator as evaluator_mod

        saved = evaluator_mod.training_state_preserved
        evaluator_mod.training_state_preserved = not_restoring
        try:
            perturbed = _train(make_hook())
        finally:
            evaluator_mod.training_state_preserved = saved
        assert perturbed[:2] == plain[:2] and perturbed[2:] != plain[2:], (plain, perturbed)


def test_training_losses_identical_with_and_without_hook(tmp_path):
    run_world(_world, 2, tmp_path)
