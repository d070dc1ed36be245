"""secateurs: pruning algorithms for PyTorch behind one config and mask API."""

from ._registry import PRUNERS
from .analysis import count_flops_params
from .config import ModuleSetting
from .masks import attach_masks, detach_masks, get_masks, load_masks, save_masks
from .evaluators import Evaluator, TorchEvaluator
from .layers import SplitMultiheadAttention, split_multihead_attention
from .pruners import (
    ActivationAPoZRankPruner,
    AutoCompressPruner,
    ActivationMeanRankPruner,
    ADMMPruner,
    AGPPruner,
    AMCPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    LinearPruner,
    LotteryTicketPruner,
    MovementPruner,
    SimulatedAnnealingPruner,
    Pruner,
    SlimPruner,
    TaylorFOWeightPruner,
    UnprunedWarning,
)
from .oneshot import PruneReport, prune
from .report import SparsityReport, sparsity_report
from .speedup import ModelSpeedup, SpeedupReport, load_pruned_model, save_pruned_model

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lightning and Transformers stay optional: their evaluators import on first use.
    if name in ("LightningEvaluator", "TransformersEvaluator"):
        from . import evaluators

        return getattr(evaluators, name)
    raise AttributeError(f"module 'secateurs' has no attribute {name!r}")

__all__ = [
    "PRUNERS",
    "ADMMPruner",
    "AGPPruner",
    "AMCPruner",
    "ActivationAPoZRankPruner",
    "AutoCompressPruner",
    "ActivationMeanRankPruner",
    "Evaluator",
    "SlimPruner",
    "TaylorFOWeightPruner",
    "TorchEvaluator",
    "UnprunedWarning",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "LinearPruner",
    "LotteryTicketPruner",
    "MovementPruner",
    "SimulatedAnnealingPruner",
    "SplitMultiheadAttention",
    "split_multihead_attention",
    "ModelSpeedup",
    "ModuleSetting",
    "Pruner",
    "PruneReport",
    "SparsityReport",
    "SpeedupReport",
    "attach_masks",
    "count_flops_params",
    "detach_masks",
    "get_masks",
    "load_masks",
    "load_pruned_model",
    "prune",
    "save_masks",
    "save_pruned_model",
    "sparsity_report",
]


# `from secateurs import *` must work without the optional frameworks: their evaluators are
# exported only when the framework is installed (they still import on first use).
def _installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


__all__ += [name for name, package in (("LightningEvaluator", "lightning"), ("TransformersEvaluator", "transformers"))
            if _installed(package)]
