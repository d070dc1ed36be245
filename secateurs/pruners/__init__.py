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
from .admm import ADMMPruner
from .iterative import AGPPruner, LinearPruner
from .lottery import LotteryTicketPruner
from .annealing import AutoCompressPruner, SimulatedAnnealingPruner
from .amc import AMCPruner
from .movement import MovementPruner
from .search import SearchPruner, SearchSpace

__all__ = [
    "ADMMPruner",
    "AGPPruner",
    "AMCPruner",
    "ActivationAPoZRankPruner",
    "AutoCompressPruner",
    "ActivationMeanRankPruner",
    "DataPruner",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "LinearPruner",
    "LotteryTicketPruner",
    "MovementPruner",
    "Pruner",
    "SearchPruner",
    "SearchSpace",
    "SimulatedAnnealingPruner",
    "SlimPruner",
    "Target",
    "TaylorFOWeightPruner",
    "UnprunedWarning",
]
