"""Pure scoring functions: ``(n_units, unit_numel)`` tensor -> ``(n_units,)`` scores.

Higher scores are more important; the lowest scored units are pruned. Each function
is vectorised over units.
"""

from .fpgm import fpgm
from .norm import l1_norm, l2_norm, magnitude

__all__ = ["fpgm", "l1_norm", "l2_norm", "magnitude"]
