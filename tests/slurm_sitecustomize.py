"""Test-only ``sitecustomize``: the Slurm tests copy this file as ``sitecustomize.py`` into a
folder of their own and put that folder on ``PYTHONPATH`` of the jobs they submit, so every
Python process that ``srun`` / ``torchrun`` start in those jobs runs it at start-up. Neither
the package nor the example scripts know of it.

In a torchrun worker (``LOCAL_RANK`` set) it does what ``tests/megatron_launch.py`` does before
it runs a Megatron-LM entry script: installs :mod:`megatron_cpu_shim` (CUDA on the CPU, before
``megatron`` is imported) and the test probes whose variables are set (``HESNR_E2E_SLOW_PASS``:
see :mod:`megatron_launch`).
"""
import os
import sys

if "LOCAL_RANK" in os.environ and os.environ.get("HESNR_TEST_TESTS_DIR"):
    sys.path.insert(0, os.environ["HESNR_TEST_TESTS_DIR"])
    import megatron_launch

    megatron_launch.install(megatron_launch.MEGATRON_LM)
    megatron_launch.install_probes(megatron_launch.MEGATRON_LM)
