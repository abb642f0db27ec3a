"""What the Megatron-LM hook and the Bridge callback emit on fixed inputs, as text.

``hook_outputs(tmp)`` / ``bridge_outputs(tmp)`` drive each front end over two evaluations
(window policy, micro-batches of 2 windows, two sets, a report category) and return the
JSONL records (without the wall-clock ``time`` and ``config.eval_seconds``), the validation lines and the TensorBoard / W&B
scalars, one per line.  ``test_integration_golden.py`` compares them with the files under
``tests/golden/``: text, keys, integers and strings exactly, every float to 1e-12 relative
(``float_tolerance.py``: float results differ in the last bits from one CPU to the next).
The model computes in float64, so its logits vary between CPUs by float64 ulps, well inside
that tolerance (a float32 ulp would move the metrics by ~1e-7).  Regenerate the files
deliberately with ``PYTHONPATH=$PWD python tests/golden_outputs.py`` (only when a change of
output is intended).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hesnr_bridge_helpers as B  # noqa: E402
import hesnr_integration_helpers as H  # noqa: E402
from megatron_hesnr.metric.accumulator import AccumulatorConfig  # noqa: E402

GOLDEN = HERE / "golden"
V, S = 24, 8


class _Model(torch.nn.Module):
    """Full-vocabulary float64 LM with GPTModel's calling convention; ``scale`` changes its
    logits, ``nudge`` (logits -> logits) perturbs them."""

    def __init__(self, scale: float = 1.0, nudge=None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        # float32 draws (the weights the files were first written with), computed in float64
        self.emb = torch.nn.Parameter(torch.randn(V, 6, generator=g).double())
        self.out = torch.nn.Parameter(torch.randn(V, 6, generator=g).double() * scale)
        self.nudge = nudge

    def forward(self, input_ids, position_ids, attention_mask, labels=None):
        logits = self.emb[input_ids] @ self.out.t()
        return self.nudge(logits) if self.nudge else logits


def _sets():
    return {"/d/a": H.uniform_dataset(V, n=5, seed=0, max_len=21), "/d/b": H.uniform_dataset(V, n=3, seed=1, max_len=21)}


_SETTINGS = dict(impl="torch", metric=AccumulatorConfig(num_bins=32), window_stride=3, micro_batch_size=2,
                 num_microbatches=3, report_categories=("action", "thought"))


def _capture(run, jsonl: Path, writer, wandb) -> str:
    from megatron_hesnr.evaluation.logging_sinks import _stdout_logger
    from megatron_hesnr.evaluation.records import read_raw_records

    catch = H.LineCatcher()
    _stdout_logger().addHandler(catch)
    slurm = {k: os.environ.pop(k) for k in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT") if k in os.environ}
    try:
        run()
    finally:
        _stdout_logger().removeHandler(catch)
        os.environ.update(slurm)
    out = []
    for rec in read_raw_records(str(jsonl)):
        rec.pop("time")
        # who wrote it: host and pid vary; job id and restart come from the (cleared) Slurm environment
        rec["writer"] = {k: rec["writer"][k] for k in ("job_id", "restart")}
        rec["config"].pop("eval_seconds")  # wall time, like ``time``
        out.append("record " + json.dumps(rec).replace(str(jsonl.parent), "<tmp>"))
    out += ["line " + line for line in catch.lines if "took" not in line]
    out += [f"tensorboard {tag} {value!r} {step}" for tag, value, step in writer.scalars]
    # Python 3.12's sum() of floats is compensated: the histogram's moments differ in the last digit.
    out += [f"histogram {json.dumps({k: _digits(v) for k, v in h.items()}, sort_keys=True)}" for h in writer.hists]
    out += [f"wandb {json.dumps(d, sort_keys=True)} {step}" for d, step in wandb.logged]
    return "\n".join(out) + "\n"


def _digits(v):
    return float(f"{v:.12g}") if isinstance(v, float) else v


def hook_outputs(tmp: Path, nudge=None) -> str:
    """Two evaluations (iterations 4 and 8) of the Megatron-LM hook (``nudge``: see ``_Model``)."""
    from megatron_hesnr.evaluation.config import EvalDataset, HESNRConfig
    from megatron_hesnr.evaluation.topology import Topology
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    jsonl, writer, wandb = tmp / "hook.jsonl", B.FakeWriter(), B.FakeWandb()
    args = SimpleNamespace(seq_length=S, padded_vocab_size=V, curr_iteration=3, skip_train=False, save="/ckpt/run7",
                           load=None, consumed_train_samples=64)
    config = HESNRConfig(datasets=(EvalDataset("a", "/d/a"), EvalDataset("b", "/d/b")), jsonl=str(jsonl), **_SETTINGS)
    hook = MegatronHESNRHook(config, get_args=lambda: args, topology=Topology, forward_backward_func=H.forward_only,
                             open_dataset=_sets().__getitem__, get_wandb_writer=lambda: wandb)

    def run():
        for it, consumed, scale in ((4, 64, 1.0), (8, 128, 1.7)):
            args.curr_iteration, args.consumed_train_samples = it - 1, consumed
            hook.process_non_loss_data_func(hook.non_loss_data_func([_Model(scale, nudge)]), it, writer)

    return _capture(run, jsonl, writer, wandb)


def bridge_outputs(tmp: Path, nudge=None) -> str:
    """Two evaluations (steps 4 and 8) of the Bridge callback fired by Bridge's callback manager."""
    from megatron_hesnr.evaluation.topology import Topology

    callbacks, _, shimmed = B.import_bridge()
    try:
        from megatron_hesnr.bridge import HESNRBridgeConfig, HESNRCallback

        jsonl, writer, wandb = tmp / "bridge.jsonl", B.FakeWriter(), B.FakeWandb()
        config = HESNRBridgeConfig(datasets=["a=/d/a", "b=/d/b"], jsonl=str(jsonl), bridge_logs_loss_dict=True,
                                   **_SETTINGS)
        cb = HESNRCallback(config, open_dataset=_sets().__getitem__, topology=Topology,
                           forward_backward_func=H.forward_only)
        state = B.global_state(B.container(seq_length=S, eval_interval=2), step=4, consumed=64, writer=writer,
                               wandb=wandb)
        manager = callbacks.normalize_callbacks([cb])

        def fire(event, model, **kw):
            manager.fire(event, callbacks.CallbackContext(state=state, model=[model], user_state=manager.user_state, **kw))

        def run():
            fire("on_train_start", _Model(nudge=nudge))
            loss = {"lm loss": torch.tensor(2.5)}
            fire("on_eval_end", _Model(nudge=nudge), total_loss_dict=loss)
            state.train_state.step, state.train_state.consumed_train_samples = 8, 128
            fire("on_eval_end", _Model(1.7, nudge), total_loss_dict=loss)
            writer.scalars.extend((f"loss_dict {k}", float(v), 0) for k, v in sorted(loss.items()))

        return _capture(run, jsonl, writer, wandb)
    finally:
        if shimmed:
            B.drop_bridge_modules()


OUTPUTS = {"hook.txt": hook_outputs, "bridge.txt": bridge_outputs}

if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    for name, make in OUTPUTS.items():
        with tempfile.TemporaryDirectory() as d:
            (GOLDEN / name).write_text(make(Path(d)))
        print("wrote", GOLDEN / name)
