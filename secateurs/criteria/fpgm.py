"""Filter Pruning via Geometric Median (He et al., CVPR 2019, arXiv 1811.00250)."""

from __future__ import annotations

import torch


def fpgm(units: torch.Tensor) -> torch.Tensor:
    """Sum of Euclidean distances from each unit to every other unit of the layer.

    Units near the geometric median have the smallest sum: the rest of the layer can
    stand in for them, so they are pruned first. All pairwise distances come from one
    Gram matrix, ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``, with no loop over filters; it is
    computed in float64 so that the cancellation in that form stays far below the
    gaps between scores.

    >>> [round(v, 4) for v in fpgm(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])).tolist()]
    [6.0, 9.4721, 5.4721]
    """
    x = units.double().nan_to_num(0.0)  # partial blocks: padding counts as zeros
    gram = x @ x.T
    sq = gram.diagonal().clone()
    return gram.mul_(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0).sqrt_().sum(dim=1)
