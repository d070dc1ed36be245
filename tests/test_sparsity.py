"""Exact pruned counts for every allocation rule (NNI's floor(n * r) rule)."""

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from secateurs import L1NormPruner, LevelPruner
from secateurs.config import ModuleSetting
from secateurs.sparsity import Slot, allocate, expand_units, global_counts, lowest_mask, to_units


def _pruned(mask):
    return int(mask.numel() - mask.count_nonzero())


def _channels_pruned(mask):
    return int((~mask.flatten(1).any(1)).sum())


def test_level_per_layer_count_is_floor_of_n_times_ratio():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 13), nn.Linear(13, 3))
    _, masks = LevelPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.37}]).compress()
    assert _pruned(masks["0"]["weight"]) == math.floor(91 * 0.37)
    assert _pruned(masks["1"]["weight"]) == math.floor(39 * 0.37)
    assert "bias" not in masks["0"]


def test_level_prunes_exactly_the_smallest_magnitudes():
    model = nn.Sequential(nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -0.1], [3.0, -2.0], [0.2, 1.0]]))
    _, masks = LevelPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}]).compress()
    assert masks["0"]["weight"].tolist() == [[False, False], [True, True], [False, True]]


def test_channel_pruning_counts_and_bias_alignment(cnn):
    _, masks = L1NormPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}]).compress()
    w = masks["conv2"]["weight"]
    assert _channels_pruned(w) == math.floor(16 * 0.3)
    # A channel is either wholly kept or wholly pruned, and its bias follows it.
    assert torch.equal(w.flatten(1).all(1), w.flatten(1).any(1))
    assert torch.equal(masks["conv2"]["bias"], w.flatten(1).all(1))


def test_l1_prunes_the_filters_with_smallest_l1_norm():
    model = nn.Sequential(nn.Linear(2, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.1, 0.2], [-3.0, 0.0], [0.0, 0.25]]))
    _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}]).compress()
    assert masks["0"]["bias"].tolist() == [True, False, True, False]


def test_in_channel_granularity_prunes_input_columns(cnn):
    config = [{"op_names": ["fc1"], "sparse_ratio": 0.25, "granularity": "in_channel"}]
    _, masks = L1NormPruner(cnn, config).compress()
    w = masks["fc1"]["weight"]
    assert int((~w.any(0)).sum()) == 16 and bool(w.all(0).sum() == 48)
    assert "bias" not in masks["fc1"]


def test_block_granularity_prunes_whole_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6, bias=False))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "granularity": [2, 4]}]
    _, masks = LevelPruner(model, config).compress()
    blocks = masks["0"]["weight"].reshape(3, 2, 2, 4).permute(0, 2, 1, 3).reshape(6, 8)
    assert torch.equal(blocks.all(1), blocks.any(1))  # each block is all kept or all pruned
    assert int((~blocks.any(1)).sum()) == 3


def test_per_channel_granularity_prunes_each_row_to_the_ratio():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 4))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.3, "granularity": "per_channel"}]
    _, masks = LevelPruner(model, config).compress()
    assert (~masks["0"]["weight"]).sum(1).tolist() == [3, 3, 3, 3]


def test_threshold_prunes_below_it_within_min_and_max():
    model = nn.Sequential(nn.Linear(1, 10, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(10.0).reshape(10, 1))
    prune = lambda cfg: LevelPruner(model, [{"op_types": ["Linear"], **cfg}]).calculate_masks()["0"]["weight"]
    assert _pruned(prune({"sparse_threshold": 3.5})) == 4
    assert _pruned(prune({"sparse_threshold": 3.5, "max_sparse_ratio": 0.25})) == 2
    assert _pruned(prune({"sparse_threshold": 3.5, "min_sparse_ratio": 0.6})) == 6


def test_global_group_ranks_across_layers():
    model = nn.Sequential(nn.Linear(1, 4, bias=False), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
        model[1].weight.copy_(torch.tensor([[10.0, 20.0, 0.5, 30.0]]))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": "g"}]
    masks = LevelPruner(model, config).calculate_masks()
    assert masks["0"]["weight"].flatten().tolist() == [False, False, False, True]
    assert masks["1"]["weight"].flatten().tolist() == [True, True, False, True]


def test_global_group_honours_max_sparse_ratio_per_layer():
    model = nn.Sequential(nn.Linear(1, 10, bias=False), nn.Linear(10, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.full((10, 1), 0.01))
        model[1].weight.copy_(torch.arange(1.0, 11.0).reshape(1, 10))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": 0, "max_sparse_ratio": 0.7}]
    masks = LevelPruner(model, config).calculate_masks()
    assert _pruned(masks["0"]["weight"]) == 7
    assert _pruned(masks["1"]["weight"]) == 3
    assert masks["1"]["weight"].flatten()[:3].tolist() == [False, False, False]


def test_global_group_without_max_keeps_one_unit_per_layer():
    model = nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.full((4, 1), 0.001))
        model[1].weight.copy_(torch.arange(1.0, 17.0).reshape(4, 4))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": 0}]
    masks = L1NormPruner(model, config).calculate_masks()
    assert _channels_pruned(masks["0"]["weight"]) == 3  # a layer never loses every channel
    assert masks["1"]["bias"].tolist() == [False, True, True, True]


def test_global_group_that_cannot_reach_its_ratio_is_refused():
    model = nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 4))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.8, "global_group_id": 0, "max_sparse_ratio": 0.5}]
    with pytest.raises(ValueError):
        L1NormPruner(model, config)  # rejected up front: sparse_ratio > max_sparse_ratio
    model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1))  # floor(1 * 0.5) = 0 each, floor(2 * 0.5) = 1
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": 0, "max_sparse_ratio": 0.5}]
    with pytest.raises(ValueError, match="global_group_id 0"):
        L1NormPruner(model, config).compress()


def test_dependency_group_prunes_identical_channels_with_combined_scores():
    model = nn.Sequential(nn.Linear(1, 4, bias=False), nn.Linear(1, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [5.0], [2.0], [9.0]]))
        model[1].weight.copy_(torch.tensor([[9.0], [1.0], [3.0], [1.0]]))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "dependency_group_id": 1}]
    masks = L1NormPruner(model, config).calculate_masks()
    # Summed scores 10, 6, 5, 10: channels 1 and 2 go in both layers.
    assert masks["0"]["weight"].flatten().tolist() == [True, False, False, True]
    assert torch.equal(masks["0"]["weight"], masks["1"]["weight"])


def test_dependency_group_members_must_have_equal_channel_counts():
    model = nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 3))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "dependency_group_id": 1}]
    with pytest.raises(ValueError, match="dependency_group_id 1"):
        L1NormPruner(model, config).compress()


def test_units_round_trip_for_any_block_shape():
    t = torch.arange(5 * 7 * 3.0).reshape(5, 7, 3)
    for blocks in [(1, 1, 1), (2, 3, 1), (5, 7, 3), (1, 7, 3), (4, 2, 2)]:
        units = to_units(t, blocks)
        keep = torch.arange(units.shape[0]) % 2 == 0
        full = expand_units(keep, t.shape, blocks)
        assert full.shape == t.shape
        assert torch.equal(to_units(full.float(), blocks, pad=0.0).amax(1) == 1, keep)


_SETTING = ModuleSetting("m", "Linear", 0, sparse_ratio=0.5, global_group_id=0)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_sampled_fast_path_equals_exact_selection(data):
    """The fast path for big groups gives exactly the masks of the exact radix path."""
    slots = []
    for i in range(data.draw(st.integers(1, 4))):
        n = data.draw(st.integers(1, 200))
        values = torch.tensor(data.draw(st.lists(st.integers(-20, 20), min_size=n, max_size=n)), dtype=torch.float32)
        scale = data.draw(st.sampled_from([1.0, 1e-3, 1e20]))
        low = data.draw(st.integers(0, n // 3))
        high = data.draw(st.integers(max(low, n // 2), n))
        slots.append(Slot([(f"m{i}", "weight")], values * scale, _SETTING, low, high))
    lo, hi = sum(s.min_count for s in slots), sum(s.max_count for s in slots)
    total = data.draw(st.integers(lo, hi))
    fast = allocate_group(slots, total, fast_min_units=0)
    exact = [lowest_mask(s.scores, c) for s, c in zip(slots, global_counts(slots, total))]
    for f, e in zip(fast, exact):
        assert torch.equal(f, e)
    assert sum(int((~f).sum()) for f in fast) == total
    for f, s in zip(fast, slots):
        assert s.min_count <= int((~f).sum()) <= s.max_count


def allocate_group(slots, total, fast_min_units):
    from secateurs.sparsity import _group_keep

    return _group_keep(slots, total, fast_min_units)


def test_global_counts_match_a_brute_force_greedy():
    torch.manual_seed(3)
    for _ in range(50):
        slots = []
        for i in range(3):
            n = int(torch.randint(1, 9, ()))
            low = int(torch.randint(0, n // 2 + 1, ()))
            high = int(torch.randint(low, n + 1, ()))
            slots.append(Slot([(f"m{i}", "w")], torch.randint(-3, 4, (n,)).float(), _SETTING, low, high))
        total = int(torch.randint(sum(s.min_count for s in slots), sum(s.max_count for s in slots) + 1, ()))
        counts = [s.min_count for s in slots]
        ranked = sorted(
            ((v, i, r) for i, s in enumerate(slots) for r, v in enumerate(sorted(s.scores.tolist()))),
        )
        for _, i, r in ranked:
            if sum(counts) == total:
                break
            if r == counts[i] and counts[i] < slots[i].max_count:
                counts[i] += 1
        assert global_counts(slots, total) == counts


def test_allocate_threshold_ignores_groups():
    scores = torch.tensor([0.1, 0.5, 0.9])
    setting = ModuleSetting("m", "Linear", 0, sparse_threshold=0.6, global_group_id=1)
    (keep,) = allocate([Slot([("m", "w")], scores, setting, 0, 3)])
    assert keep.tolist() == [False, False, True]


def test_a_partial_block_is_scored_on_its_own_elements():
    model = nn.Sequential(nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.7, 0.7, 0.8]]))
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "granularity": [1, 2]}]
    mask = LevelPruner(model, config).calculate_masks()["0"]["weight"]
    assert mask.tolist() == [[False, False, True]]  # the partial block (0.8) outranks the full one (0.7)


# -- dependency groups: declared, traced, and both through one code path --------------------


class _Residual(nn.Module):
    """conv1 -> bn1 and conv2 joined by a residual add; fc reads the sum."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(y) + y).mean((2, 3)))


class _TwoBranches(nn.Module):
    def __init__(self, right=8):
        super().__init__()
        self.left, self.bn_left = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.right, self.bn_right = nn.Conv2d(3, right, 3, padding=1), nn.BatchNorm2d(right)
        self.fc = nn.Linear(8 + right, 4)

    def forward(self, x):
        a = torch.relu(self.bn_left(self.left(x))).mean((2, 3))
        b = torch.relu(self.bn_right(self.right(x))).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def _x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _kept_channels(mask):
    return mask.flatten(1).all(1)


@pytest.mark.parametrize(
    ("key", "first", "second"),
    [("sparse_ratio", 0.5, 0.25), ("max_sparse_ratio", 0.5, 0.75), ("min_sparse_ratio", 0.0, 0.25),
     ("global_group_id", "a", "b")],
)
def test_traced_coupled_layers_with_different_settings_are_refused_naming_both(key, first, second):
    torch.manual_seed(0)
    configs = [{"op_names": ["conv1"], "sparse_ratio": 0.5, key: first},
               {"op_names": ["conv2"], "sparse_ratio": 0.5, key: second}]
    with pytest.raises(ValueError, match=rf"'conv1' and 'conv2' share output channels \(coupled by the trace"
                                         rf".*{key}={first!r}.*{key}={second!r}"):
        L1NormPruner(_Residual(), configs, dummy_input=_x())


def test_declared_group_members_with_different_bounds_are_refused():
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(2, 4))
    configs = [{"op_names": ["0"], "sparse_ratio": 0.5, "dependency_group_id": 1, "max_sparse_ratio": 0.5},
               {"op_names": ["1"], "sparse_ratio": 0.5, "dependency_group_id": 1, "max_sparse_ratio": 0.9}]
    with pytest.raises(ValueError, match=r"'0' and '1' share output channels \(dependency_group_id 1\)"
                                         r".*max_sparse_ratio=0.5.*max_sparse_ratio=0.9"):
        L1NormPruner(model, configs)


def test_a_dependency_group_never_prunes_beyond_max_sparse_ratio():
    torch.manual_seed(0)
    config = [{"op_types": ["Conv2d"], "sparse_threshold": 1e9, "max_sparse_ratio": 0.25}]
    _, masks = L1NormPruner(_Residual(), config, dummy_input=_x()).compress()
    kept = masks["conv1"]["bias"]
    assert int((~kept).sum()) == 2 and torch.equal(masks["conv2"]["bias"], kept)


def test_bounds_never_exceed_max_sparse_ratio_and_conflicts_raise():
    from secateurs.sparsity import _bounds

    loose = ModuleSetting("m", "Linear", 0, sparse_threshold=0.0, min_sparse_ratio=0.6, max_sparse_ratio=0.6)
    assert _bounds(10, [(10, loose)], False) == (6, 6)
    tight = ModuleSetting("n", "Linear", 0, sparse_threshold=0.0, min_sparse_ratio=0.6, max_sparse_ratio=0.6)
    with pytest.raises(ValueError, match="min_sparse_ratio asks to prune at least 6 of 10 units but "
                                         "max_sparse_ratio allows at most 3"):
        _bounds(10, [(10, loose), (5, tight)], False, "group")
    only_min = ModuleSetting("m", "Linear", 0, sparse_threshold=0.0, min_sparse_ratio=0.5)
    assert _bounds(4, [(4, only_min)], True) == (2, 3)  # a global group keeps one unit by default


def test_min_above_max_is_a_config_error_naming_both_keys():
    model = nn.Sequential(nn.Linear(2, 4))
    config = [{"op_types": ["Linear"], "sparse_threshold": 0.1, "min_sparse_ratio": 0.75, "max_sparse_ratio": 0.5}]
    with pytest.raises(ValueError, match=r"config_list\[0\]: 'min_sparse_ratio' \(0.75\) must not exceed "
                                         r"'max_sparse_ratio' \(0.5\)"):
        L1NormPruner(model, config)


def test_declared_groups_join_the_traced_channel_groups():
    torch.manual_seed(0)
    model, x = _TwoBranches().eval(), _x()
    config = [{"op_names": ["left", "right"], "sparse_ratio": 0.5, "dependency_group_id": "b"}]
    _, traced = L1NormPruner(model, config, dummy_input=x).compress()
    kept = _kept_channels(traced["left"]["weight"])
    assert int((~kept).sum()) == 4 and torch.equal(_kept_channels(traced["right"]["weight"]), kept)
    for bn in ("bn_left", "bn_right"):  # the whole channel group, as the traced path masks it
        assert torch.equal(traced[bn]["weight"], kept) and torch.equal(traced[bn]["bias"], kept)
    assert torch.equal(traced["fc"]["weight"].all(0), torch.cat([kept, kept]))
    # Without the trace the same declared coupling ranks the same channels, on the targets only.
    torch.manual_seed(0)
    _, declared = L1NormPruner(_TwoBranches(), config).compress()
    assert set(declared) == {"left", "right"}
    for name in ("left", "right"):
        assert torch.equal(declared[name]["weight"], traced[name]["weight"])


def test_declared_and_traced_coupling_are_unioned():
    """left and right are declared together; right is also traced-coupled to a residual
    branch, which must then follow the same channel indices."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.left, self.right, self.extra = (nn.Conv2d(3, 8, 1) for _ in range(3))
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            a = self.left(x).mean((2, 3))
            b = (self.right(x) + self.extra(x)).mean((2, 3))
            return self.fc(torch.cat([a, b], 1))

    torch.manual_seed(0)
    config = [{"op_names": ["left", "right"], "sparse_ratio": 0.5, "dependency_group_id": 0},
              {"op_names": ["extra"], "sparse_ratio": 0.5, "dependency_group_id": 0}]
    _, masks = L1NormPruner(Net(), config, dummy_input=_x()).compress()
    kept = _kept_channels(masks["left"]["weight"])
    assert int((~kept).sum()) == 4
    assert all(torch.equal(_kept_channels(masks[n]["weight"]), kept) for n in ("right", "extra"))
    assert torch.equal(masks["fc"]["weight"].all(0), torch.cat([kept, kept]))


def test_declared_group_with_different_channel_counts_names_the_members_with_dummy_input():
    config = [{"op_names": ["left", "right"], "sparse_ratio": 0.5, "dependency_group_id": "b"}]
    with pytest.raises(ValueError, match=r"dependency_group_id 'b'.*left.weight has \(8,\), right.weight has \(6,\)"):
        L1NormPruner(_TwoBranches(right=6), config, dummy_input=_x())


# -- layers the trace fixes, or that never ran ---------------------------------------------


class _Aux(nn.Module):
    """An auxiliary head that does not run in eval mode (the trace runs in eval mode)."""

    def __init__(self):
        super().__init__()
        self.conv, self.aux, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        out = self.fc(y.mean((2, 3)))
        return out + self.aux(y).mean() if self.training else out


class _Split(nn.Module):
    """conv's channels 4..7 are added to side's, which the model also returns."""

    def __init__(self):
        super().__init__()
        self.main, self.side, self.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        side = self.side(x)
        y = torch.cat([self.main(x), side], 1) + self.conv(x)
        return self.fc(y.mean((2, 3))), side.mean((2, 3))


class _Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x).mean((2, 3))))


@pytest.mark.parametrize(
    ("model", "names", "reason"),
    [(_Normed, ["conv"], "layer norm"), (_Aux, ["aux"], "did not run on the example input"),
     (_Split, ["side"], "model output")],
)
def test_a_config_whose_layers_cannot_be_pruned_is_refused_naming_them_and_why(model, names, reason):
    config = [{"op_types": ["Conv2d", "Linear"], "op_names_re": [f"{n}$" for n in names], "sparse_ratio": 0.5}]
    with pytest.raises(ValueError, match=rf"config_list\[0\]: with dummy_input, none of the layers.*'{names[0]}' "
                                         rf"\(.*{reason}"):
        L1NormPruner(model(), config, dummy_input=_x())


def test_partly_fixed_layers_warn_once_and_the_report_says_why():
    import warnings

    from secateurs.pruners import UnprunedWarning

    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = L1NormPruner(_Split(), [{"op_names": ["conv"], "sparse_ratio": 0.5}], dummy_input=_x())
        _, masks = pruner.compress()
    ours = [w for w in caught if issubclass(w.category, UnprunedWarning)]
    assert len(ours) == 1 and "conv.weight 4 of 8 channels not pruned: model output" in str(ours[0].message)
    kept = _kept_channels(masks["conv"]["weight"])
    assert bool(kept[4:].all()) and int((~kept[:4]).sum()) == 2  # floor(4 prunable * 0.5)
    (row,) = [r for r in pruner.report().rows if (r.module_name, r.target) == ("conv", "weight")]
    assert row.note == "4 of 8 channels not pruned: model output"


def test_a_layer_that_did_not_run_is_reported_unpruned():
    from secateurs.pruners import UnprunedWarning

    torch.manual_seed(0)
    with pytest.warns(UnprunedWarning, match="aux.weight not pruned: did not run on the example input"):
        pruner = L1NormPruner(_Aux(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=_x())
    _, masks = pruner.compress()
    assert "aux" not in masks and int((~_kept_channels(masks["conv"]["weight"])).sum()) == 4
    rows = {(r.module_name, r.target): r for r in pruner.report().rows}
    assert rows[("aux", "weight")].pruned == 0 and rows[("aux", "weight")].note.endswith("did not run on the example input")


def test_an_unknown_op_that_fixes_some_selected_channels_gives_one_warning_naming_it():
    import warnings

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), torch.cumsum(self.b(x), 1)], 1).mean((2, 3)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = L1NormPruner(Net(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=_x())
        _, masks = pruner.compress()
    assert len(caught) == 1 and "b.weight not pruned: unknown op 'cumsum'" in str(caught[0].message)
    assert int((~masks["a"]["bias"]).sum()) == 4 and "b" not in masks
