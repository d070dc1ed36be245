"""The speedup engine: masks -> a physically smaller model that computes the same."""

from .engine import ModelSpeedup, SpeedupReport
from .io import load_pruned_model, save_pruned_model

__all__ = ["ModelSpeedup", "SpeedupReport", "load_pruned_model", "save_pruned_model"]
