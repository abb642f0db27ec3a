"""Old path of :mod:`megatron_hesnr.megatron_lm.hook` (see :mod:`megatron_hesnr.integration`)."""
from ..megatron_lm.hook import MegatronHESNRHook

__all__ = ["MegatronHESNRHook"]
