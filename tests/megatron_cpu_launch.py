"""Run a Megatron entry script on the CPU: ``torchrun ... tests/megatron_cpu_launch.py SCRIPT ARGS...``.

Installs :mod:`megatron_cpu_shim` in this (torchrun-started) process, then runs SCRIPT
as ``__main__`` with ARGS. Test probes, off unless their variable is set:

* ``HESNR_E2E_TRACE=PATH``: every rank appends ``{"rank", "iteration", "losses", "grad_norm"}``
  per training step to ``PATH.<rank>``, numbers as ``float.hex`` (bit-exact comparisons);
* ``HESNR_E2E_LEAK_RNG=1``: after each HE-SNR evaluation, draw once from the RNG
  the training's dropout uses, outside the hook's state guard: the negative control
  showing that the bit-identity comparison catches a hook that disturbs training.
* ``HESNR_E2E_SECOND_CAPTURE=CAPTURE``: the first HE-SNR evaluation again with that logits capture, its
  records in ``<jsonl>.<CAPTURE>`` (:func:`megatron_cpu_shim.second_capture`).
"""
from __future__ import annotations

import inspect
import json
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_cpu_shim  # noqa: E402

megatron_cpu_shim.install()


def _hex(x):
    if x is None:
        return None
    return float(x.item() if hasattr(x, "item") else x).hex()


def _trace(path: str) -> None:
    import megatron.training.training as tr

    orig = tr.training_log
    sig = inspect.signature(orig)
    rank = int(os.environ.get("RANK", "0"))

    def training_log(*a, **k):
        b = sig.bind(*a, **k)
        losses = {key: _hex(v[0] / v[1] if isinstance(v, (tuple, list)) else v)
                  for key, v in sorted((b.arguments.get("loss_dict") or {}).items())}
        with open(f"{path}.{rank}", "a") as f:
            f.write(json.dumps({"rank": rank, "iteration": b.arguments["iteration"], "losses": losses,
                                "grad_norm": _hex(b.arguments.get("grad_norm"))}) + "\n")
        return orig(*a, **k)

    tr.training_log = training_log


def _leak_rng() -> None:
    import torch

    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    orig = MegatronHESNRHook.non_loss_data_func

    def leaky(self, model):
        out = orig(self, model)
        torch.rand(1)  # the CPU generator is the "CUDA" one dropout draws from
        return out

    MegatronHESNRHook.non_loss_data_func = leaky


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: megatron_cpu_launch.py SCRIPT [ARGS...]")
    script = os.path.abspath(sys.argv[1])
    if os.environ.get("HESNR_E2E_TRACE"):
        _trace(os.environ["HESNR_E2E_TRACE"])
    if os.environ.get("HESNR_E2E_LEAK_RNG") == "1":
        _leak_rng()
    if os.environ.get("HESNR_E2E_SECOND_CAPTURE"):
        megatron_cpu_shim.second_capture(os.environ["HESNR_E2E_SECOND_CAPTURE"])
    sys.argv = [script, *sys.argv[2:]]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
