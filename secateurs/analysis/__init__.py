"""Model analysis: FLOPs (multiply-accumulates) and parameter counts."""

from .flops import count_flops_params

__all__ = ["count_flops_params"]
