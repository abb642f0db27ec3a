"""HE-SNR for NeMo / Megatron-Bridge training: one callback.

::

    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain
    from megatron_hesnr.bridge import HESNRBridgeConfig, HESNRCallback

    hesnr = HESNRBridgeConfig(datasets=["swe=/data/hesnr/swe"], jsonl="/runs/x/hesnr.jsonl")
    hesnr.check_against_container(cfg)          # optional: refuse bad settings before start-up
    pretrain(cfg, forward_step, callbacks=[HESNRCallback(hesnr)])

The package imports without Megatron-Bridge; ``HESNRCallback`` is built on first
access from Bridge's ``Callback`` (a missing or moved Bridge symbol raises
:class:`BridgeCompatError` naming it).  Supported versions: :data:`SUPPORTED_BRIDGE_VERSIONS`.
"""
from .compat import SUPPORTED_BRIDGE_VERSIONS, BridgeCompatError, bridge_version
from .config import HESNRBridgeConfig

__all__ = ["SUPPORTED_BRIDGE_VERSIONS", "BridgeCompatError", "HESNRBridgeConfig", "HESNRCallback", "bridge_version"]


def __getattr__(name: str):
    if name == "HESNRCallback":
        from .callback import callback_class

        return callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
