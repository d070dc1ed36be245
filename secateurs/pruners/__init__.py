"""One small class per pruning algorithm; each registers itself in ``PRUNERS``."""

from .base import Pruner, Target
from .basic import FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner

__all__ = ["FPGMPruner", "L1NormPruner", "L2NormPruner", "LevelPruner", "Pruner", "Target"]
