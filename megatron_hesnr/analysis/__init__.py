"""Analysis of evaluation records: correlation with downstream scores, threshold
sensitivity, an adaptive threshold, figures and the ``hesnr report`` command.

Layers (imports point down): ``records`` / ``scores`` (input) -> ``correlation`` /
``thresholds`` (numbers) -> ``summary`` (one analysis) -> ``figures`` / ``report``
(output) -> ``cli_report``.  Every metric is recomputed from the stored accumulator
state, held as numpy arrays by ``record_state`` (no torch: the ratios, the sweep and
the layout come from :mod:`megatron_hesnr.metric.state_layout`, shared with
:class:`megatron_hesnr.HESNRAccumulator`; ``EvalRecord.accumulator`` gives the
accumulator itself).  ``json_members`` lets ``hesnr compare`` decode only the
records it compares.
"""
from .correlation import correlate
from .records import EvalRecord, ReadResult, RecordError, read_records
from .scores import ScoreTable, read_scores
from .summary import analyse

__all__ = [
    "EvalRecord",
    "ReadResult",
    "RecordError",
    "ScoreTable",
    "analyse",
    "correlate",
    "read_records",
    "read_scores",
]
