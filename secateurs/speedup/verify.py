"""Verify: compare the shrunk model's output with the masked model's, leaf by leaf."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..graph import output_leaves


def compare_outputs(out: Any, reference: Any) -> tuple[float, float, str]:
    """Largest absolute and relative difference over every leaf, and where.

    Floating tensors compare by value (relative to the reference leaf's largest
    magnitude); integer and bool tensors, numbers and strings must be equal, else the
    difference is infinite. A different structure or shape is infinite too.
    """
    a, b = output_leaves(out), output_leaves(reference)
    if [p for p, _ in a] != [p for p, _ in b]:
        return math.inf, math.inf, "the output's structure changed"
    worst_abs = worst_rel = 0.0
    where = ""
    for (path, x), (_, y) in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return math.inf, math.inf, path
        if not isinstance(x, torch.Tensor):
            if x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
                return math.inf, math.inf, path
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return math.inf, math.inf, f"{path} (shape {tuple(x.shape)} vs {tuple(y.shape)})"
        if x.numel() == 0:
            continue
        if not (x.is_floating_point() or x.is_complex()):
            if not torch.equal(x, y):
                return math.inf, math.inf, path
            continue
        nan_x, nan_y = torch.isnan(x), torch.isnan(y)
        if not torch.equal(nan_x, nan_y):
            return math.inf, math.inf, f"{path} (NaN in different places)"
        diff = float((x - y).abs().masked_fill(nan_x, 0).max())
        rel = diff / max(float(y.abs().masked_fill(nan_y, 0).max()), 1e-12)
        if rel > worst_rel or diff > worst_abs:
            where = path
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
    return worst_abs, worst_rel, where
