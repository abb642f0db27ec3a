"""The HE-SNR evaluation every front end shares; it reads no Megatron-LM or Bridge globals.

:class:`HESNREvaluator` (sets, when to run, the pass, records, the validation line,
TensorBoard / W&B) takes the settings (:class:`HESNRConfig`), one :class:`Topology` and, at
each evaluation, an :class:`EvalContext`.  Front ends: :mod:`megatron_hesnr.megatron_lm`
(Megatron-LM's ``pretrain()``), :mod:`megatron_hesnr.bridge` (Megatron-Bridge / NeMo) and
the demo.  ``docs/design.md`` walks through the layers.
"""
from .config import EvalDataset, HESNRConfig, HESNRConfigError, HostSettings
from .evaluator import EvalContext, HESNREvaluator, Layout
from .topology import Topology, reduce_metrics, topology_from_pg_collection

__all__ = [
    "EvalContext",
    "EvalDataset",
    "HESNRConfig",
    "HESNRConfigError",
    "HESNREvaluator",
    "HostSettings",
    "Layout",
    "Topology",
    "reduce_metrics",
    "topology_from_pg_collection",
]
