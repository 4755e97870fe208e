"""smartsift: sift PyTorch training data online, so that only samples worth learning are trained.

Example:
    >>> import smartsift as ss
    >>> ss.RelativeProbabilistic(beta=1.0).expected_keep
    0.5
"""

from smartsift.audit import EpochRecord, IndexedDataset, SiftAudit
from smartsift.auto import Auto
from smartsift.batching import BatchTransform, UnsupportedBatchError
from smartsift.distributed import RemoteRankError
from smartsift.guards import Guarded
from smartsift.history import LossHistory
from smartsift.ledger import SiftTrace
from smartsift.loader import SiftingDataLoader
from smartsift.padding import Padding, PadField
from smartsift.policies import Policy, QuantileThreshold, RelativeProbabilistic, TopK, Uniform
from smartsift.profiling import ProfileReport, profile
from smartsift.report import plot_report
from smartsift.reuse import ReuseEpochStats, ReuseSampler
from smartsift.schedules import DataSchedule, ReuseSchedule
from smartsift.scoretable import ScoreTable
from smartsift.scoring import LossFunctionError
from smartsift.stats import SiftStats

__all__ = [
    "Auto",
    "BatchTransform",
    "DataSchedule",
    "EpochRecord",
    "Guarded",
    "IndexedDataset",
    "LossFunctionError",
    "LossHistory",
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
    "SiftAudit",
    "SiftStats",
    "SiftTrace",
    "SiftingDataLoader",
    "TopK",
    "Uniform",
    "UnsupportedBatchError",
    "plot_report",
    "profile",
]

__version__ = "0.1.0"
