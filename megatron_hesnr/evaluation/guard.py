"""Leaving training exactly as it was: modes, RNG states and Megatron's globals.

The HE-SNR pass runs between training steps.  Whatever it touches is saved before
and put back after, so that the next training step cannot tell it ran:
every module's ``training`` flag; Python, NumPy, torch CPU and CUDA RNG states and
Megatron's CUDA RNG tracker (dropout under tensor parallelism draws from it); the
model configs' ``timers`` (Megatron's evaluate() clears them during forward); and
the static loss scales of the MoE / MTP auxiliary-loss autograd functions, which
the pipeline schedule sets on every forward.
"""
from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def _tracker():
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
    except ImportError:
        return None
    try:
        return get_cuda_rng_tracker()
    except Exception:  # noqa: BLE001 - an uninitialised tracker has nothing to save
        return None


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else x


def _aux_scalers():
    out = []
    for mod, name in (("megatron.core.transformer.moe.moe_utils", "MoEAuxLossAutoScaler"),
                      ("megatron.core.transformer.multi_token_prediction", "MTPLossAutoScaler")):
        try:
            cls = getattr(__import__(mod, fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
        out.append(cls)
    return out


class TrainingStateSnapshot:
    """Everything the pass could change, captured at construction."""

    def __init__(self, models):
        self.models = list(models)
        self.modes = [(m, m.training) for chunk in self.models for m in chunk.modules()]
        self.py = random.getstate()
        self.np = np.random.get_state()
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        tracker = _tracker()
        self.tracker = tracker
        self.tracker_states = {k: _clone(v) for k, v in tracker.get_states().items()} if tracker is not None else None
        self.tracker_init = getattr(tracker, "_is_initialized", None)
        self.timers = []
        for chunk in self.models:
            cfg = getattr(chunk, "config", None)
            if cfg is not None and hasattr(cfg, "timers"):
                self.timers.append((cfg, cfg.timers))
        self.scales = [(cls, _clone(getattr(cls, "main_loss_backward_scale", None))) for cls in _aux_scalers()]

    def restore(self) -> None:
        for m, mode in self.modes:
            m.training = mode
        random.setstate(self.py)
        np.random.set_state(self.np)
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        if self.tracker is not None:
            self.tracker.set_states(self.tracker_states)
            if self.tracker_init is False:  # set_states() marks the tracker initialised
                self.tracker._is_initialized = False
        for cfg, timers in self.timers:
            cfg.timers = timers
        for cls, scale in self.scales:
            cls.main_loss_backward_scale = scale


@contextlib.contextmanager
def training_state_preserved(models):
    """Eval mode, no autograd, no timers inside; everything restored on exit (also on error)."""
    snap = TrainingStateSnapshot(models)
    try:
        for chunk in snap.models:
            chunk.eval()
        for cfg, _ in snap.timers:
            cfg.timers = None
        with torch.no_grad():
            yield snap
    finally:
        snap.restore()
