"""Test-only ``sitecustomize``: the Slurm tests copy this file as ``sitecustomize.py`` into a
folder of their own and put that folder on ``PYTHONPATH`` of the jobs they submit, so every
Python process that ``srun`` / ``torchrun`` start in those jobs runs it at start-up. Neither
the package nor the example scripts know of it.

In a torchrun worker (``LOCAL_RANK`` set) it installs :mod:`megatron_cpu_shim` (CUDA on the
CPU, before ``megatron`` is imported). One probe, off unless its variable is set:

``HESNR_TEST_SLOW_PASS=ITERATION:SECONDS:DIR:RESTART``: in the start RESTART of the job
(``SLURM_RESTART_COUNT``, 0 if unset), the HE-SNR evaluation at ITERATION scores and writes
its records, then writes ``DIR/pass-started.<rank>`` and sleeps SECONDS before returning to
Megatron's evaluate(), so that a test can requeue the job inside the evaluation, after the
records are on disk and before the checkpoint of that iteration.
"""
import os
import sys

if "LOCAL_RANK" in os.environ and os.environ.get("HESNR_TEST_TESTS_DIR"):
    sys.path.insert(0, os.environ["HESNR_TEST_TESTS_DIR"])
    import megatron_cpu_shim

    megatron_cpu_shim.install()

    _probe = os.environ.get("HESNR_TEST_SLOW_PASS", "")
    _it, _seconds, _rest = (_probe.split(":", 2) + ["", "", ""])[:3]
    _dir, _, _restart = _rest.rpartition(":")
    if _probe and int(os.environ.get("SLURM_RESTART_COUNT") or 0) == int(_restart):
        import time

        from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

        _orig = MegatronHESNRHook.non_loss_data_func

        def _slow(self, model):
            out = _orig(self, model)
            if MegatronHESNRHook._iteration(__import__("megatron.training", fromlist=["get_args"]).get_args()) \
                    == int(_it):
                with open(os.path.join(_dir, f"pass-started.{os.environ.get('RANK', '0')}"), "w") as f:
                    f.write(str(time.time()))
                time.sleep(float(_seconds))
            return out

        MegatronHESNRHook.non_loss_data_func = _slow
