"""Pruners that score weights alone: Level, L1Norm, L2Norm, FPGM."""

from __future__ import annotations

from .._registry import PRUNERS
from ..criteria import fpgm, l1_norm, l2_norm, magnitude
from .base import Pruner


@PRUNERS.register("level")
class LevelPruner(Pruner):
    """Prune the weights of smallest magnitude, element by element.

    With ``granularity`` set to a block shape, each block is scored by its mean |w|.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(8, 4))
        >>> _, masks = LevelPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}]).compress()
        >>> int(masks["0"]["weight"].sum())
        16
    """

    needs = ()
    default_granularity = "element"
    criterion = staticmethod(magnitude)


@PRUNERS.register("l1norm")
class L1NormPruner(Pruner):
    """Prune the output channels (filters, rows) with the smallest L1 norm.

    Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017. The bias of a pruned
    channel is pruned with it.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3))
        >>> _, masks = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.25}]).compress()
        >>> masks["0"]["weight"].flatten(1).all(1).sum().item(), masks["0"]["bias"].sum().item()
        (6, 6)
    """

    needs = ()
    criterion = staticmethod(l1_norm)


@PRUNERS.register("l2norm")
class L2NormPruner(Pruner):
    """Prune the output channels with the smallest L2 norm (otherwise as L1NormPruner)."""

    needs = ()
    criterion = staticmethod(l2_norm)


@PRUNERS.register("fpgm")
class FPGMPruner(Pruner):
    """Prune the output channels nearest the layer's geometric median.

    He et al., "Filter Pruning via Geometric Median", CVPR 2019 (arXiv 1811.00250): a
    filter whose summed distance to the other filters is smallest is the most
    replaceable.
    """

    needs = ()
    criterion = staticmethod(fpgm)
