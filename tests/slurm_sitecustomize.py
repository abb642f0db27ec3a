"""Test-only ``sitecustomize``: the Slurm tests copy this file as ``sitecustomize.py`` into a
folder of their own and put that folder on ``PYTHONPATH`` of the jobs they submit, so every
Python process that ``srun`` / ``torchrun`` start in those jobs runs it at start-up. Neither
the package nor the example scripts know of it.

In a torchrun worker (``LOCAL_RANK`` set) it installs :mod:`megatron_cpu_shim` (CUDA on the
CPU, before ``megatron`` is imported). One probe, off unless its variable is set:

``HESNR_TEST_SLOW_PASS=ITERATION:SECONDS:DIR``: in the first run of the job (restart 0), the
HE-SNR pass at ITERATION writes ``DIR/pass-started.<rank>`` and then sleeps SECONDS before
scoring, so that a test can requeue the job while the pass runs.
"""
import os
import sys

if "LOCAL_RANK" in os.environ and os.environ.get("HESNR_TEST_TESTS_DIR"):
    sys.path.insert(0, os.environ["HESNR_TEST_TESTS_DIR"])
    import megatron_cpu_shim

    megatron_cpu_shim.install()

    if os.environ.get("HESNR_TEST_SLOW_PASS") and int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
        import time

        from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

        _it, _seconds, _dir = os.environ["HESNR_TEST_SLOW_PASS"].split(":", 2)
        _orig = MegatronHESNRHook.non_loss_data_func

        def _slow(self, model):
            from megatron.training import get_args

            if get_args().curr_iteration == int(_it):
                with open(os.path.join(_dir, f"pass-started.{os.environ.get('RANK', '0')}"), "w") as f:
                    f.write(str(time.time()))
                time.sleep(float(_seconds))
            return _orig(self, model)

        MegatronHESNRHook.non_loss_data_func = _slow
