"""Evaluate saved checkpoints one after another in one process, each as its own Bridge run.

``tests/megatron_launch.py --bridge tests/bridge_eval_checkpoints.py JOBS.json``: JOBS.json is a
list of argument lists for ``examples/bridge_pretrain_hesnr.py`` (each with
``validation.skip_train=true checkpoint.load=DIR checkpoint.ckpt_step=N``); each is run through
the example's own :func:`~megatron_hesnr.bridge.entry.run_bridge_recipe`, i.e. Bridge's real
``pretrain()`` loading the checkpoint and evaluating it with ``HESNRCallback``. Running them in
one process saves Bridge's import and start-up per checkpoint (test infrastructure only: the
checkpoint sweep a user runs is one launch per checkpoint).
"""
from __future__ import annotations

import json
import sys

from megatron_hesnr.bridge.entry import run_bridge_recipe


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        jobs = json.load(f)
    for argv in jobs:
        print("bridge_eval_checkpoints: run", " ".join(argv), flush=True)
        run_bridge_recipe(argv)


if __name__ == "__main__":
    main()
