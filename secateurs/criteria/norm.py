"""Magnitude and norm criteria."""

from __future__ import annotations

import torch


def magnitude(units: torch.Tensor) -> torch.Tensor:
    """|w| per element; for blocks, the mean |w| of the block (NaN padding is skipped).

    >>> magnitude(torch.tensor([[-3.0], [1.0], [2.0]])).tolist()
    [3.0, 1.0, 2.0]
    """
    if units.shape[1] == 1:
        return units.reshape(-1).abs()
    return torch.nanmean(units.abs(), dim=1)


def l1_norm(units: torch.Tensor) -> torch.Tensor:
    """Sum of |w| over each unit (Li et al., "Pruning Filters for Efficient ConvNets");
    NaN padding of partial blocks is skipped.

    >>> l1_norm(torch.tensor([[1.0, -2.0], [0.5, 0.5]])).tolist()
    [3.0, 1.0]
    """
    return torch.nansum(units.abs(), dim=1)


def l2_norm(units: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each unit (NaN padding of partial blocks is skipped).

    >>> l2_norm(torch.tensor([[3.0, -4.0], [1.0, 0.0]])).tolist()
    [5.0, 1.0]
    """
    return torch.nansum(units.square(), dim=1).sqrt()
