"""Known answers and argument checks of the sparsity schedules."""

import itertools

import pytest

from secateurs.schedules import agp, linear, lottery

AGP = [  # s_f + (s_i - s_f)(1 - t/T)^3 with s_f = 0.9, s_i = 0, T = 10
    (0, 0.0), (1, 0.9 - 0.9 * 0.729), (2, 0.9 - 0.9 * 0.512), (5, 0.9 - 0.9 * 0.125), (9, 0.9 - 0.9 * 0.001), (10, 0.9)]
LOTTERY = [(0, 0.0), (1, 0.5), (2, 0.75), (3, 0.875), (4, 0.9375)]  # 1 - 0.0625 ** (i / 4)


@pytest.mark.parametrize(("t", "expected"), [(0, 0.0), (1, 0.09), (2, 0.18), (5, 0.45), (9, 0.81), (10, 0.9)])
def test_linear_known_answers(t, expected):
    assert linear(t, 10, 0.9) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("t", "expected"), AGP)
def test_agp_known_answers(t, expected):
    assert agp(t, 10, 0.9) == pytest.approx(expected, abs=1e-12)


def test_agp_starts_at_initial_and_ends_exactly_at_final():
    assert agp(0, 3, 0.8, initial=0.2) == pytest.approx(0.2)
    assert agp(3, 3, 0.8, initial=0.2) == 0.8
    assert agp(1, 3, 0.8, initial=0.2) == pytest.approx(0.8 - 0.6 * (2 / 3) ** 3)
    values = [agp(t, 20, 0.95) for t in range(21)]
    assert values == sorted(values)  # never decreases
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert steps == sorted(steps, reverse=True)  # pruning slows down


@pytest.mark.parametrize(("i", "expected"), LOTTERY)
def test_lottery_known_answers(i, expected):
    assert lottery(i, 4, 0.9375) == pytest.approx(expected, abs=1e-12)


def test_lottery_prunes_the_same_fraction_of_survivors_each_round():
    kept = [1 - lottery(i, 5, 0.8) for i in range(6)]
    ratios = [b / a for a, b in itertools.pairwise(kept)]
    assert ratios == pytest.approx([0.2 ** (1 / 5)] * 5)
    assert lottery(5, 5, 0.8) == 0.8


BAD = [
    (agp, (0, 0, 0.5), "The 'total' argument of agp must be a positive int; got 0."),
    (agp, (1, 2.0, 0.5), "The 'total' argument of agp must be a positive int; got 2.0."),
    (agp, (3, 2, 0.5), r"The 't' argument of agp must be an int in \[0, total\] = \[0, 2\]; got 3."),
    (agp, (-1, 2, 0.5), r"The 't' argument of agp must be an int in \[0, total\] = \[0, 2\]; got -1."),
    (agp, (1.0, 2, 0.5), r"The 't' argument of agp must be an int .*; got 1.0."),
    (agp, (1, 2, 1.0), r"The 'final' argument of agp must be a float in \[0, 1\); got 1.0."),
    (agp, (1, 2, 0.5, -0.1), r"The 'initial' argument of agp must be a float in \[0, 1\); got -0.1."),
    (agp, (1, 2, 0.5, 0.6), r"The 'initial' argument of agp must not exceed 'final' \(0.5\); got 0.6."),
    (linear, (1, True, 0.5), "The 'total' argument of linear must be a positive int; got True."),
    (linear, (1, 2, "0.5"), r"The 'final' argument of linear must be a float in \[0, 1\); got '0.5'."),
    (lottery, (1, 0, 0.5), "The 'n' argument of lottery must be a positive int; got 0."),
    (lottery, (4, 3, 0.5), r"The 'i' argument of lottery must be an int in \[0, n\] = \[0, 3\]; got 4."),
    (lottery, (1, 3, 1.5), r"The 'final' argument of lottery must be a float in \[0, 1\); got 1.5."),
]


@pytest.mark.parametrize(("fn", "args", "words"), BAD, ids=[f"{f.__name__}-{a}" for f, a, _ in BAD])
def test_bad_arguments_are_refused_not_clamped(fn, args, words):
    with pytest.raises(ValueError, match=words):
        fn(*args)
