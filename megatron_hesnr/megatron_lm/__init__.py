"""The Megatron-LM front end: the only code that reads ``get_args()`` and ``parallel_state``.

:class:`~.hook.MegatronHESNRHook` (Megatron's ``non_loss_data_func`` pair) translates them
into the shared :mod:`megatron_hesnr.evaluation`; :mod:`.args` adds the ``--hesnr-*`` flags;
:mod:`.entry` runs a Megatron-LM checkout's ``pretrain_gpt`` / ``pretrain_hybrid`` with them;
:mod:`.compat` hides the differences between megatron-core versions.
"""
from .topology import topology_from_parallel_state

__all__ = ["MegatronHESNRHook", "topology_from_parallel_state"]


def __getattr__(name: str):
    if name == "MegatronHESNRHook":
        from .hook import MegatronHESNRHook

        return MegatronHESNRHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
