"""Old path of :mod:`megatron_hesnr.megatron_lm.entry` (see :mod:`megatron_hesnr.integration`)."""
from ..megatron_lm.entry import run_megatron_entry

__all__ = ["run_megatron_entry"]
