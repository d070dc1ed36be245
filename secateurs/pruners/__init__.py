"""One small class per pruning algorithm; each registers itself in ``PRUNERS``."""

from .base import Pruner, Target, UnprunedWarning
from .basic import FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner
from .data import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    DataPruner,
    SlimPruner,
    TaylorFOWeightPruner,
)

__all__ = [
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "DataPruner",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "Pruner",
    "SlimPruner",
    "Target",
    "TaylorFOWeightPruner",
    "UnprunedWarning",
]
