"""Bridge's save on its exit signal, when every process of the job gets that signal.

Slurm delivers a job's ``--signal`` (what NeMo-Run's ``PreemptionPlugin`` asks for:
``TERM@<seconds>``), ``scancel --signal`` and a requeue's SIGTERM to *every* process of the job
step, and torchrun forwards SIGTERM to its workers' process groups. megatron-core's
``torch_dist`` checkpoint writer collects its results through a ``multiprocessing`` Manager that
it starts at the first save (``filesystem_async.get_write_results_queue``; ``_get_write_results_queue`` before 0.19): a process of its own,
which the same SIGTERM ends. Bridge's exit handler then saves on the signal and the save fails
with ``BrokenPipeError`` (seen on the test cluster: the job is requeued, but resumes from the
checkpoint before). :func:`keep_checkpoint_writer_alive` starts that Manager before Bridge does,
its server process ignoring the exit signal (it still ends with the worker: the Manager's
finalizer shuts it down at exit, and it ends itself when the worker is gone).
"""
from __future__ import annotations

import logging
import multiprocessing
import signal

log = logging.getLogger(__name__)

_MANAGER = None   # kept for the process's life: the queue's server
QUEUE_GETTERS = ("get_write_results_queue", "_get_write_results_queue")


def _ignore(signum: int) -> None:
    """The Manager's server: ignore ``signum``; end when the training process is gone (a SIGKILL
    leaves no one to shut it down)."""
    import os
    import threading
    import time

    signal.signal(signum, signal.SIG_IGN)
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="hesnr-parent-watch").start()


def keep_checkpoint_writer_alive(exit_signal: int = signal.SIGTERM) -> bool:
    """Start megatron-core's write-results queue in a Manager that ignores ``exit_signal``.
    Returns False (and changes nothing) where megatron-core has no such queue or already made it."""
    global _MANAGER
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    except ImportError:
        return False
    # the queue getter is get_write_results_queue in core 0.19, _get_write_results_queue in 0.16
    if not hasattr(fa, "_results_queue") or not any(hasattr(fa, n) for n in QUEUE_GETTERS):
        log.warning("HE-SNR: megatron-core has no filesystem_async._results_queue: a save on signal %d may fail "
                    "if its writer's helper process gets the signal too", int(exit_signal))
        return False
    if fa._results_queue is not None:
        return False
    from multiprocessing.managers import SyncManager

    # what get_write_results_queue makes (a spawn-context Manager's Queue), its server ignoring the signal
    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=_ignore, initargs=(int(exit_signal),))
    fa._results_queue = manager.Queue()
    _MANAGER = manager
    return True
