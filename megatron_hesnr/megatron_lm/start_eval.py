"""``--hesnr-eval-at-start`` under Megatron-LM: the loaded weights, evaluated before the first step.

Megatron-LM's ``pretrain()`` builds the model and loads the checkpoint
(``setup_model_and_optimizer``), then builds the data iterators, calling the
train/valid/test dataset provider (which :meth:`MegatronHESNRHook.wrap_dataset_provider`
wraps, in the example entry points and in the patched ``pretrain_gpt.py``), then calls
``megatron.training.training.train(forward_step_func, model, ...)``, whose loop
evaluates only after a step. Megatron takes no function that it calls between the load
and the first step, so the wrapped dataset provider *arms* a one-shot wrapper of the
module's ``train`` (``pretrain`` looks it up when it calls it): its first call puts the
original back, evaluates ``model`` at the loaded iteration (``args.iteration``) and goes
on into the original. Under ``--skip-train`` ``train`` is never called: the skip-train
evaluation is the loaded weights' already.
"""
from __future__ import annotations

import functools
import inspect
import logging

log = logging.getLogger(__name__)

#: The module whose ``train`` ``pretrain()`` calls.
TRAINING_MODULE = "megatron.training.training"


def arm(evaluate_at_start) -> bool:
    """Make the next call of Megatron's ``train`` first run ``evaluate_at_start(model)`` (once).
    Returns False when this Megatron has no ``train`` to wrap (nothing is evaluated at start)."""
    import importlib

    try:
        mod = importlib.import_module(TRAINING_MODULE)
    except ImportError:
        return False
    train = getattr(mod, "train", None)
    if train is None or getattr(train, "_hesnr_eval_at_start", False):
        return train is not None
    signature = inspect.signature(train)
    if "model" not in signature.parameters:
        log.warning("HE-SNR: %s.train takes no 'model': --hesnr-eval-at-start does nothing", TRAINING_MODULE)
        return False

    @functools.wraps(train)
    def train_after_start_evaluation(*args, **kwargs):
        mod.train = train   # one shot: the original from now on
        evaluate_at_start(signature.bind(*args, **kwargs).arguments["model"])
        return train(*args, **kwargs)

    train_after_start_evaluation._hesnr_eval_at_start = True
    mod.train = train_after_start_evaluation
    return True
