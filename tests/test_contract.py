"""The contract every registered pruner keeps (parametrised over the registry)."""

import math

import pytest
import torch
import torch.nn.functional as F

from secateurs import PRUNERS, TorchEvaluator, get_masks
from secateurs.pruners import DataPruner


def _evaluator(model):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in data * 10:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    def step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01), step)


def make(name, model, ratio=0.5, **extra):
    cls = PRUNERS.get(name)
    op_types = ["BatchNorm2d"] if name == "slim" else ["Conv2d", "Linear"]
    config = [{"op_types": op_types, "sparse_ratio": ratio, **extra}]
    if issubclass(cls, DataPruner):
        return cls(model, config, _evaluator(model), training_steps=3)
    return cls(model, config)


def _pruned_units(pruner, masks):
    units = pruned = 0
    for t in pruner.targets:
        mask = masks[t.module_name][t.name]
        size = math.prod(t.blocks)
        units += mask.numel() // size
        pruned += (mask.numel() - int(mask.count_nonzero())) // size
    return units, pruned


@pytest.mark.parametrize("name", PRUNERS.names())
def test_compress_returns_the_same_model_and_full_shape_binary_masks(name, cnn):
    pruner = make(name, cnn)
    model, masks = pruner.compress()
    assert model is cnn
    assert set(masks) == {t.module_name for t in pruner.targets}
    for module_name, targets in masks.items():
        for target, mask in targets.items():
            assert mask.shape == getattr(cnn.get_submodule(module_name), target).shape
            assert mask.dtype == torch.bool


@pytest.mark.parametrize("name", PRUNERS.names())
def test_requested_ratio_is_realised_exactly(name, cnn):
    pruner = make(name, cnn, ratio=0.3)
    _, masks = pruner.compress()
    if name == "slim":  # ranks globally across its norm layers
        units, pruned = _pruned_units(pruner, masks)
        assert pruned == math.floor(units * 0.3)
        return
    for t in pruner.targets:
        mask = masks[t.module_name][t.name]
        units = mask.numel() // math.prod(t.blocks)
        assert (mask.numel() - int(mask.count_nonzero())) // math.prod(t.blocks) == math.floor(units * 0.3)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_parameter_identity_and_unwrap(name, cnn, batch):
    params = [id(p) for p in cnn.parameters()]
    pruner = make(name, cnn)
    pruner.compress()
    cnn.eval()
    out = cnn(batch)
    pruner.unwrap_model()
    assert sorted(id(p) for p in cnn.parameters()) == sorted(params)
    assert get_masks(cnn) == {}
    assert torch.allclose(cnn(batch), out, atol=1e-6)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_global_group_is_realised_over_the_group(name, cnn):
    pruner = make(name, cnn, ratio=0.4, global_group_id=0)
    _, masks = pruner.compress()
    units, pruned = _pruned_units(pruner, masks)
    assert pruned == math.floor(units * 0.4)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_bad_model_is_a_type_error(name):
    cls = PRUNERS.get(name)
    args = (None, 3) if issubclass(cls, DataPruner) else ()
    with pytest.raises(TypeError):
        cls("not a model", [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], *args)


def test_registry_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean 'l1norm'"):
        PRUNERS.get("l1_norm")
    assert PRUNERS.get("L1NormPruner") is PRUNERS.get("l1norm")
