"""Old import path (before 0.2): the Megatron-LM front end is now :mod:`megatron_hesnr.megatron_lm`
and the shared evaluation :mod:`megatron_hesnr.evaluation`.

Kept so that a Megatron-LM checkout patched with an older ``patches/*.patch``
(``from megatron_hesnr.integration.hook import MegatronHESNRHook``) and launch scripts copied
from older examples (``megatron_hesnr.integration.entry``) still start; re-apply the current
patch to drop it.
"""
import warnings

warnings.warn("megatron_hesnr.integration is now megatron_hesnr.megatron_lm (hook, entry) and "
              "megatron_hesnr.evaluation; re-apply the current patches/*.patch", DeprecationWarning, stacklevel=2)
