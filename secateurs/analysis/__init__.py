"""Model analysis: FLOPs (multiply-accumulates), parameter counts, and per-layer pruning sensitivity."""

from .flops import count_flops_params
from .sensitivity import SensitivityResult, sensitivity

__all__ = ["SensitivityResult", "count_flops_params", "sensitivity"]
