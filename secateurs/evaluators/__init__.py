"""Evaluators: let pruners act inside the user's own training.

``LightningEvaluator`` and ``TransformersEvaluator`` are imported on first use, so
Lightning and Hugging Face Transformers stay optional dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Evaluator, StopTraining
from .torch import TorchEvaluator

_OPTIONAL = {
    "LightningEvaluator": (".lightning", "lightning"),
    "TransformersEvaluator": (".transformers", "'transformers[torch]'"),
}

__all__ = ["Evaluator", "LightningEvaluator", "StopTraining", "TorchEvaluator", "TransformersEvaluator"]


def __getattr__(name: str) -> Any:
    if name not in _OPTIONAL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, requirement = _OPTIONAL[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as err:
        raise ImportError(f"secateurs.evaluators.{name} needs an optional package: pip install {requirement}") from err
    return getattr(module, name)
