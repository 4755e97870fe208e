"""smartsift: sift PyTorch training data online, so that only samples worth learning are trained.

Example:
    >>> import smartsift as ss
    >>> ss.RelativeProbabilistic(beta=1.0).expected_keep
    0.5
"""

from smartsift.batches.indexed import IndexedDataset
from smartsift.batches.padding import Padding, PadField
from smartsift.batches.structure import BatchTransform, UnsupportedBatchError
from smartsift.engine.audit import EpochRecord, SiftAudit
from smartsift.engine.distributed import RemoteRankError
from smartsift.engine.history import LossHistory
from smartsift.engine.ledger import SiftTrace
from smartsift.engine.stats import SiftStats
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.reuse import ReuseEpochStats, ReuseSampler
from smartsift.modes.schedules import DataSchedule, ReuseSchedule
from smartsift.modes.scores import ClassNormalised
from smartsift.modes.scoring import LossFunctionError
from smartsift.modes.table import ScoreTable
from smartsift.policies import (
    InfoBatch,
    Policy,
    QuantileThreshold,
    RelativeProbabilistic,
    SeTa,
    TopK,
    Uniform,
)
from smartsift.policies.auto import Auto
from smartsift.policies.guards import Guarded
from smartsift.tools.profiling import ModeAdvice, ProfileReport, advise_mode, profile
from smartsift.tools.report import plot_report

__all__ = [
    "Auto",
    "BatchTransform",
    "ClassNormalised",
    "DataSchedule",
    "EpochRecord",
    "Guarded",
    "IndexedDataset",
    "InfoBatch",
    "LossFunctionError",
    "LossHistory",
    "ModeAdvice",
    "PadField",
    "Padding",
    "Policy",
    "ProfileReport",
    "QuantileThreshold",
    "RelativeProbabilistic",
    "RemoteRankError",
    "ReuseEpochStats",
    "ReuseSampler",
    "ReuseSchedule",
    "ScoreTable",
    "SeTa",
    "SiftAudit",
    "SiftStats",
    "SiftTrace",
    "SiftingDataLoader",
    "TopK",
    "Uniform",
    "UnsupportedBatchError",
    "advise_mode",
    "plot_report",
    "profile",
]

__version__ = "0.1.0"
