"""Pure ``step -> sparsity`` schedules of the iterative pruners.

Each function maps a round (or step) ``t`` of ``total`` to the sparsity to reach at that
point. Arguments are validated with one message format and never clamped:

    >>> agp(0, 0, 0.5)
    Traceback (most recent call last):
    ...
    ValueError: The 'total' argument of agp must be a positive int; got 0.
"""

from __future__ import annotations

import numbers


def _check_steps(fn: str, t: object, total: object, t_name: str = "t", total_name: str = "total") -> None:
    if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 1:
        raise ValueError(f"The {total_name!r} argument of {fn} must be a positive int; got {total!r}.")
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t <= total:
        raise ValueError(f"The {t_name!r} argument of {fn} must be an int in [0, {total_name}] = [0, {total}]; "
                         f"got {t!r}.")


def _check_sparsity(fn: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"The {name!r} argument of {fn} must be a float in [0, 1); got {value!r}.")


def linear(t: int, total: int, final: float) -> float:
    """Sparsity growing linearly from 0 to ``final``: ``s_t = final * t / T``.

    The schedule of NNI's LinearPruner (each of ``total`` rounds adds ``final / total``).

    Args:
        t: the round (or step), ``0 <= t <= total``.
        total: the number of rounds ``T >= 1``.
        final: the sparsity reached at ``t = T``, in [0, 1).

    Raises:
        ValueError: an argument is of the wrong type or out of range.

    Example:
        >>> [linear(t, 4, 0.5) for t in range(5)]
        [0.0, 0.125, 0.25, 0.375, 0.5]
    """
    _check_steps("linear", t, total)
    _check_sparsity("linear", "final", final)
    return float(final) * int(t) / int(total)


def agp(t: int, total: int, final: float, initial: float = 0.0) -> float:
    """Automated Gradual Pruning's cubic schedule: ``s_t = s_f + (s_i - s_f) * (1 - t / T) ** 3``.

    Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression", arXiv 1710.01878, eq. 1 (with ``t`` counted in pruning rounds from the
    start of pruning). Sparsity rises fast at first, while redundant weights abound, and
    slowly near the end.

    Args:
        t: the round (or step), ``0 <= t <= total``.
        total: the number of rounds ``T >= 1``.
        final: ``s_f``, the sparsity reached at ``t = T``, in [0, 1).
        initial: ``s_i``, the sparsity at ``t = 0``, in [0, 1) and at most ``final``.

    Raises:
        ValueError: an argument is of the wrong type or out of range.

    Example:
        >>> [round(agp(t, 4, 0.8), 6) for t in range(5)]
        [0.0, 0.4625, 0.7, 0.7875, 0.8]
    """
    _check_steps("agp", t, total)
    _check_sparsity("agp", "final", final)
    _check_sparsity("agp", "initial", initial)
    if initial > final:
        raise ValueError(f"The 'initial' argument of agp must not exceed 'final' ({final!r}); got {initial!r}.")
    if t == total:  # exact, without the rounding of (1 - 1) ** 3 arithmetic
        return float(final)
    return float(final) + (float(initial) - float(final)) * (1 - int(t) / int(total)) ** 3


def lottery(i: int, n: int, final: float) -> float:
    """The Lottery Ticket rounds' sparsity: ``s_i = 1 - (1 - P) ** (i / n)``.

    Frankle & Carbin, "The Lottery Ticket Hypothesis", arXiv 1803.03635: each of the
    ``n`` rounds prunes the same fraction of the weights that survived the previous one,
    so that round ``n`` reaches the final sparsity ``P``.

    Args:
        i: the round, ``0 <= i <= n``.
        n: the number of rounds ``n >= 1``.
        final: ``P``, the sparsity reached at round ``n``, in [0, 1).

    Raises:
        ValueError: an argument is of the wrong type or out of range.

    Example:
        >>> [round(lottery(i, 2, 0.75), 6) for i in range(3)]
        [0.0, 0.5, 0.75]
    """
    _check_steps("lottery", i, n, "i", "n")
    _check_sparsity("lottery", "final", final)
    if i == n:
        return float(final)
    return 1 - (1 - float(final)) ** (int(i) / int(n))

