"""Magnitude and norm criteria."""

from __future__ import annotations

import torch


def magnitude(units: torch.Tensor) -> torch.Tensor:
    """|w| per element; for blocks, the mean |w| of the block.

    >>> magnitude(torch.tensor([[-3.0], [1.0], [2.0]])).tolist()
    [3.0, 1.0, 2.0]
    """
    if units.shape[1] == 1:
        return units.reshape(-1).abs()
    return units.abs().mean(dim=1)


def l1_norm(units: torch.Tensor) -> torch.Tensor:
    """Sum of |w| over each unit (Li et al., "Pruning Filters for Efficient ConvNets").

    >>> l1_norm(torch.tensor([[1.0, -2.0], [0.5, 0.5]])).tolist()
    [3.0, 1.0]
    """
    return units.abs().sum(dim=1)


def l2_norm(units: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each unit.

    >>> l2_norm(torch.tensor([[3.0, -4.0], [1.0, 0.0]])).tolist()
    [5.0, 1.0]
    """
    return torch.linalg.vector_norm(units, ord=2, dim=1)
