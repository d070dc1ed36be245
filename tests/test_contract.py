"""The contract every registered pruner keeps (parametrised over the registry)."""

import math

import pytest
import torch

from secateurs import PRUNERS, get_masks

CONFIG = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]


def make(name, model, config_list):
    return PRUNERS.get(name)(model, config_list)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_compress_returns_the_same_model_and_full_shape_binary_masks(name, cnn):
    model, masks = make(name, cnn, CONFIG).compress()
    assert model is cnn
    assert set(masks) == {"conv1", "conv2", "fc1", "fc2"}
    for module_name, targets in masks.items():
        for target, mask in targets.items():
            assert mask.shape == getattr(cnn.get_submodule(module_name), target).shape
            assert mask.dtype == torch.bool


@pytest.mark.parametrize("name", PRUNERS.names())
def test_requested_ratio_is_realised_exactly(name, cnn):
    pruner = make(name, cnn, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.3}])
    _, masks = pruner.compress()
    for t in pruner.targets:
        mask = masks[t.module_name][t.name]
        units = mask.numel() // math.prod(t.blocks)
        pruned_units = (mask.numel() - int(mask.count_nonzero())) // math.prod(t.blocks)
        assert pruned_units == math.floor(units * 0.3)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_parameter_identity_and_unwrap(name, cnn, batch):
    params = [id(p) for p in cnn.parameters()]
    pruner = make(name, cnn, CONFIG)
    pruner.compress()
    out = cnn(batch)
    pruner.unwrap_model()
    assert sorted(id(p) for p in cnn.parameters()) == sorted(params)
    assert get_masks(cnn) == {}
    assert torch.allclose(cnn(batch), out, atol=1e-6)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_global_group_is_realised_over_the_group(name, cnn):
    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.4, "global_group_id": 0}]
    pruner = make(name, cnn, config)
    _, masks = pruner.compress()
    units = pruned = 0
    for t in pruner.targets:
        mask = masks[t.module_name][t.name]
        size = math.prod(t.blocks)
        units += mask.numel() // size
        pruned += (mask.numel() - int(mask.count_nonzero())) // size
    assert pruned == math.floor(units * 0.4)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_bad_model_is_a_type_error(name):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        PRUNERS.get(name)("not a model", CONFIG)


def test_registry_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean 'l1norm'"):
        PRUNERS.get("l1_norm")
    assert PRUNERS.get("L1NormPruner") is PRUNERS.get("l1norm")
