"""Known answers for each scoring criterion."""

import math

import torch

from secateurs.criteria import fpgm, l1_norm, l2_norm, magnitude


def test_magnitude_is_absolute_value_per_element():
    units = torch.tensor([[-3.0], [0.5], [2.0]])
    assert magnitude(units).tolist() == [3.0, 0.5, 2.0]


def test_magnitude_of_blocks_is_mean_absolute_value():
    units = torch.tensor([[-1.0, 3.0], [0.0, -2.0]])
    assert magnitude(units).tolist() == [2.0, 1.0]


def test_l1_and_l2_norm_per_unit():
    units = torch.tensor([[3.0, -4.0], [1.0, 1.0]])
    assert l1_norm(units).tolist() == [7.0, 2.0]
    assert torch.allclose(l2_norm(units), torch.tensor([5.0, math.sqrt(2.0)]))


def test_fpgm_sums_distances_to_the_other_filters():
    # Four filters on a line at 0, 1, 2 and 10: the middle ones are nearest the median.
    units = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    expected = [0 + 1 + 2 + 10, 1 + 0 + 1 + 9, 2 + 1 + 0 + 8, 10 + 9 + 8 + 0]
    assert torch.allclose(fpgm(units).float(), torch.tensor(expected, dtype=torch.float32))


def test_fpgm_matches_a_direct_pairwise_computation():
    torch.manual_seed(0)
    units = torch.randn(17, 30)
    direct = torch.stack([(units - u).norm(dim=1).sum() for u in units])
    assert torch.allclose(fpgm(units).float(), direct, rtol=1e-5)
