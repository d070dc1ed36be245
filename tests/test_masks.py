"""Masks: parameter identity, training, replacement, unwrap, copies, save/load."""

import copy

import pytest
import torch
import torch.nn as nn

from secateurs import L1NormPruner, LevelPruner, attach_masks, get_masks, load_masks, save_masks

CONFIG = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]


def test_parameters_are_the_same_objects_after_compress(cnn):
    before = {id(p) for p in cnn.parameters()}
    LevelPruner(cnn, CONFIG).compress()
    assert {id(p) for p in cnn.parameters()} == before


def test_an_optimizer_built_before_compress_trains_the_masked_model(cnn, batch):
    opt = torch.optim.SGD(cnn.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):  # momentum that predates the masks
        opt.zero_grad()
        cnn(batch).square().mean().backward()
        opt.step()
    _, masks = L1NormPruner(cnn, CONFIG).compress()
    w0 = cnn.fc1.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        cnn(batch).square().mean().backward()
        opt.step()
    assert not torch.equal(cnn.fc1.weight.detach(), w0)  # it trained
    for name, targets in masks.items():
        module = cnn.get_submodule(name)
        for target, mask in targets.items():
            assert torch.all(getattr(module, target)[~mask] == 0)  # pruned entries stay zero


def test_masks_can_be_replaced(cnn):
    pruner = LevelPruner(cnn, [{"op_names": ["fc1"], "sparse_ratio": 0.25}])
    pruner.compress()
    denser = get_masks(cnn)["fc1"]["weight"].clone()
    pruner = LevelPruner(cnn, [{"op_names": ["fc1"], "sparse_ratio": 0.75}])
    pruner.compress()
    sparser = get_masks(cnn)["fc1"]["weight"]
    assert int((~sparser).sum()) == 1536 and int((~denser).sum()) == 512
    assert torch.all(~sparser[~denser])  # what was pruned stays pruned (its score is now 0)
    assert torch.all(cnn.fc1.weight[~sparser] == 0)


def test_unwrap_keeps_masked_values_and_identity(cnn, batch):
    params = {id(p) for p in cnn.parameters()}
    pruner = L1NormPruner(cnn, CONFIG)
    _, masks = pruner.compress()
    expected = cnn(batch)
    pruner.unwrap_model()
    assert get_masks(cnn) == {}
    assert type(cnn.conv1) is nn.Conv2d
    assert {id(p) for p in cnn.parameters()} == params
    assert torch.allclose(cnn(batch), expected)
    assert torch.all(cnn.conv1.weight[~masks["conv1"]["weight"]] == 0)


def test_deepcopy_and_state_dict_of_a_masked_model(cnn, batch):
    L1NormPruner(cnn, CONFIG).compress()
    clone = copy.deepcopy(cnn)
    assert torch.allclose(clone(batch), cnn(batch))
    fresh = type(cnn)()
    L1NormPruner(fresh, CONFIG).compress()  # same structure, other masks
    fresh.load_state_dict(cnn.state_dict())
    assert torch.allclose(fresh(batch), cnn(batch))


def test_masked_model_computes_with_masked_weights(cnn, batch):
    reference = copy.deepcopy(cnn)
    _, masks = L1NormPruner(cnn, CONFIG).compress()
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                getattr(reference.get_submodule(name), target).mul_(mask)
    assert torch.allclose(cnn(batch), reference(batch), atol=1e-6)


def test_save_and_load_round_trip(cnn, tmp_path):
    _, masks = L1NormPruner(cnn, CONFIG).compress()
    path = tmp_path / "masks.safetensors"
    save_masks(masks, path)
    loaded = load_masks(path)
    assert loaded.keys() == masks.keys()
    for name in masks:
        for target in masks[name]:
            assert torch.equal(loaded[name][target], masks[name][target])
    other = type(cnn)()
    attach_masks(other, loaded)
    assert torch.all(other.conv2.weight[~masks["conv2"]["weight"]] == 0)


def test_loading_a_file_that_is_not_a_masks_file_is_refused(tmp_path):
    pickled = tmp_path / "masks.pt"
    torch.save({"fc1": {"weight": torch.ones(2)}}, pickled)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_masks(pickled)


def test_attaching_masks_of_the_wrong_shape_names_the_target(cnn):
    with pytest.raises(ValueError, match=r"masks\['fc1'\]\['weight'\] has shape \(3,\)"):
        attach_masks(cnn, {"fc1": {"weight": torch.ones(3)}})
    with pytest.raises(KeyError, match="did you mean 'fc1'"):
        attach_masks(cnn, {"fc_1": {"weight": torch.ones(3)}})
    with pytest.raises(ValueError, match="only 0 and 1"):
        attach_masks(cnn, {"fc2": {"bias": torch.full((10,), 0.5)}})


def _snapshot(model):
    return {m: {t: v.clone() for t, v in e.items()} for m, e in get_masks(model).items()}


def _still_pruned(before, after):
    return all(not (after[m][t] & ~old).any() for m, e in before.items() for t, old in e.items())


@pytest.mark.parametrize("traced", [False, True], ids=["no-trace", "traced"])
def test_level_after_l1_keeps_the_pruned_channels_and_reaches_its_own_ratio(cnn, batch, traced):
    kwargs = {"dummy_input": batch} if traced else {}
    L1NormPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], **kwargs).compress()
    channels = _snapshot(cnn)
    _, masks = LevelPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.8}], **kwargs).compress()
    after = _snapshot(cnn)
    assert _still_pruned(channels, after)
    for name in ("conv1", "conv2"):
        weight = after[name]["weight"]
        assert int((~weight).sum()) == int(weight.numel() * 0.8)  # already-pruned elements count first
        assert torch.equal(masks[name]["weight"], weight)


@pytest.mark.parametrize("traced", [False, True], ids=["no-trace", "traced"])
def test_l1_after_level_keeps_the_pruned_elements(cnn, batch, traced):
    kwargs = {"dummy_input": batch} if traced else {}
    LevelPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], **kwargs).compress()
    elements = _snapshot(cnn)
    L1NormPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], **kwargs).compress()
    after = _snapshot(cnn)
    assert _still_pruned(elements, after)
    for name, channels in (("conv1", 8), ("conv2", 16)):
        assert int((~after[name]["weight"].flatten(1).any(1)).sum()) == channels // 2
        assert torch.all(cnn.get_submodule(name).weight[~after[name]["weight"]] == 0)


def test_already_pruned_units_are_never_revived_even_beyond_the_new_count(cnn):
    L1NormPruner(cnn, [{"op_names": ["conv2"], "sparse_ratio": 0.75}]).compress()
    before = _snapshot(cnn)
    _, masks = L1NormPruner(cnn, [{"op_names": ["conv2"], "sparse_ratio": 0.25}]).compress()
    assert torch.equal(masks["conv2"]["weight"], before["conv2"]["weight"])  # 12 of 16 stay pruned, not 4


def test_a_mask_changed_in_place_or_replaced_is_used_at_once():
    import torch.nn as nn

    from secateurs import attach_masks, get_masks

    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    attach_masks(layer, {"": {"weight": torch.ones(2, 3, dtype=torch.bool)}})
    full = layer(x)
    get_masks(layer)[""]["weight"][0] = False  # in place: the next forward sees it
    assert torch.allclose(layer(x)[:, 0], layer.bias[0].expand(4))
    attach_masks(layer, {"": {"weight": torch.ones(2, 3, dtype=torch.bool)}})  # replaced
    assert torch.allclose(layer(x), full)
    assert torch.allclose(layer.double()(x.double()), full.double(), atol=1e-6)  # another dtype


def test_a_forward_under_inference_mode_does_not_break_training_afterwards():
    # Lightning validates under torch.inference_mode between training rounds; the mask's
    # cached float copy made there must not leak into autograd.
    model = torch.nn.Linear(4, 3)
    attach_masks(model, {"": {"weight": torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool)}})
    x = torch.randn(2, 4)
    with torch.inference_mode():
        model(x)
    model(x).sum().backward()
    assert torch.equal(model.parametrizations.weight.original.grad[:, 1], torch.zeros(3))
