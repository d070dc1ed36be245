"""secateurs: pruning algorithms for PyTorch behind one config and mask API."""

from ._registry import PRUNERS
from .analysis import count_flops_params
from .config import ModuleSetting
from .masks import attach_masks, detach_masks, get_masks, load_masks, save_masks
from .evaluators import Evaluator, TorchEvaluator
from .pruners import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    Pruner,
    SlimPruner,
    TaylorFOWeightPruner,
)
from .report import SparsityReport, sparsity_report
from .speedup import ModelSpeedup, SpeedupReport, load_pruned_model, save_pruned_model

__version__ = "0.1.0"

__all__ = [
    "PRUNERS",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "Evaluator",
    "SlimPruner",
    "TaylorFOWeightPruner",
    "TorchEvaluator",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "ModelSpeedup",
    "ModuleSetting",
    "Pruner",
    "SparsityReport",
    "SpeedupReport",
    "attach_masks",
    "count_flops_params",
    "detach_masks",
    "get_masks",
    "load_masks",
    "load_pruned_model",
    "save_masks",
    "save_pruned_model",
    "sparsity_report",
]
