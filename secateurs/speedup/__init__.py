"""The speedup engine: masks -> a physically smaller model that computes the same."""

from .engine import ModelSpeedup, SpeedupReport

__all__ = ["ModelSpeedup", "SpeedupReport"]
