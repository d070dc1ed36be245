"""Known answers for the data-driven pruners, and the evaluator's patches being undone."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secateurs import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    ModelSpeedup,
    SlimPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
)


def _data(n=5, features=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, features, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(n)]


def _evaluator(model, data, lr=0.0, seen=None):
    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in data * 100:
            optimizers.zero_grad()
            loss = training_step(batch, model)
            if seen is not None:
                seen.append(loss.item())
            loss.backward()
            optimizers.step()

    def step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=lr), step)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_apoz_prunes_the_channel_that_is_always_zero_first():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[2] = 0.0
        model[0].bias[2] = -1.0  # relu(output) of channel 2 is always 0
        model[0].bias[[0, 1, 3]] = 5.0  # the others are never 0
    config = [{"op_names": ["0"], "sparse_ratio": 0.25}]
    _, masks = ActivationAPoZRankPruner(model, config, _evaluator(model, _data()), training_steps=3).compress()
    assert masks["0"]["bias"].tolist() == [True, True, False, True]


def test_meanrank_prunes_the_channel_with_the_smallest_mean_activation():
    model = _mlp()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([3.0, 0.5, 2.0, 1.0]))  # constant activations
    config = [{"op_names": ["0"], "sparse_ratio": 0.5}]
    pruner = ActivationMeanRankPruner(model, config, _evaluator(model, _data()), training_steps=2)
    _, masks = pruner.compress()
    assert masks["0"]["bias"].tolist() == [True, False, True, False]
    assert torch.allclose(pruner.stats[("0", "weight")], torch.tensor([3.0, 0.5, 2.0, 1.0]))


def test_taylor_scores_are_the_accumulated_squared_weight_times_gradient():
    model = _mlp()
    data = _data()
    config = [{"op_names": ["0"], "sparse_ratio": 0.5}]
    pruner = TaylorFOWeightPruner(model, config, _evaluator(model, data), training_steps=3)
    # Independently: lr = 0 keeps the weights, so each step's gradient is that of its batch.
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for x, y in data[:3]:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expected += (model[0].weight.detach() * model[0].weight.grad).double().square()
    _, masks = pruner.compress()
    assert torch.allclose(pruner.stats[("0", "weight")], expected)
    channel = expected.sum(1)
    keep = torch.zeros(4, dtype=torch.bool)
    keep[channel.argsort()[2:]] = True
    assert torch.equal(masks["0"]["bias"], keep)


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _image_data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(3)]


def test_slim_prunes_the_smallest_scale_factors_after_training():
    model = ConvBn()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.0, 0.01, 0.5, 0.02]))
    config = [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}]
    pruner = SlimPruner(model, config, _evaluator(model, _image_data(), lr=1e-3), training_steps=3)
    _, masks = pruner.compress()
    assert masks["bn"]["weight"].tolist() == [True, False, True, False]
    assert masks["bn"]["bias"].tolist() == [True, False, True, False]


def test_slim_penalty_is_added_to_the_loss_and_shrinks_gammas():
    model, seen = ConvBn(), []
    data = _image_data()
    gammas = model.bn.weight.detach().abs().sum().item()
    raw = F.cross_entropy(model(data[0][0]), data[0][1]).item()  # the first training batch
    config = [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.25}]
    evaluator = _evaluator(model, data, lr=0.05, seen=seen)
    SlimPruner(model, config, evaluator, training_steps=5, regular_scale=0.5).compress()
    assert seen[0] == pytest.approx(raw + 0.5 * gammas / 4, rel=1e-5)  # mean |gamma| of the 4 channels
    assert model.bn.weight.detach().abs().sum().item() < gammas


def test_slim_masks_on_batchnorm_alone_remove_the_conv_channels_in_speedup():
    """NNI's Slim masks removed nothing after speedup; ours remove the producing conv's channels."""
    model = ConvBn()
    x = torch.randn(2, 3, 6, 6)
    config = [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}]
    SlimPruner(model, config, _evaluator(model, _image_data(), lr=1e-3), training_steps=2).compress()
    model.eval()
    expected = model(x)
    ModelSpeedup(model, x).speedup_model()
    assert model.conv.out_channels == 2 and model.bn.num_features == 2 and model.head.in_features == 2
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_slim_on_layers_without_scale_factors_trains_one_per_channel_and_discards_it():
    model = ConvBn()
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    before = model(x)
    model.train()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    # regular_scale 0: the factors move by the task's gradient alone, so they differ
    pruner = SlimPruner(model, config, _evaluator(model, _image_data()), training_steps=5, regular_scale=0.0)
    _, masks = pruner.compress()
    factors = pruner.stats[("conv", "weight")]
    assert factors.shape == (4,) and not torch.allclose(factors, torch.ones(4))  # they were trained
    assert not model.conv._forward_hooks  # and are gone: lr 0 kept the weights, so only masks differ
    keep = masks["conv"]["bias"]
    assert int(keep.sum()) == 2 and torch.equal(keep, factors >= factors.sort().values[2])
    model.eval()
    assert not torch.allclose(model(x), before)  # the masks take effect


def test_data_pruners_with_dummy_input_give_speedup_ready_masks():
    model = ConvBn()
    x = torch.randn(2, 3, 6, 6)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    ev = _evaluator(model, _image_data(), lr=1e-3)
    _, masks = TaylorFOWeightPruner(model, config, ev, training_steps=2, dummy_input=x).compress()
    assert set(masks) == {"conv", "bn", "head"}  # the whole channel group
    model.eval()
    expected = model(x)
    ModelSpeedup(model, x).speedup_model()
    assert model.conv.out_channels == 2 and torch.allclose(model(x), expected, atol=1e-5)


def test_evaluator_patches_are_undone_after_compress_and_after_an_error():
    model = _mlp()
    data = _data()
    evaluator = _evaluator(model, data)
    optimizer = evaluator.optimizers
    ActivationAPoZRankPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], evaluator, 2).compress()
    assert not model[0]._forward_hooks
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert evaluator.model is None and not evaluator._loss_patches

    def broken(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        optimizers.zero_grad()
        training_step(data[0], model).backward()
        optimizers.step()
        raise RuntimeError("the user's loop failed")

    evaluator.training_func = broken
    with pytest.raises(RuntimeError, match="user's loop failed"):
        SlimPruner(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
                   [{"op_types": ["BatchNorm1d"], "sparse_ratio": 0.5}], evaluator, 5).compress()
    assert not optimizer._optimizer_step_pre_hooks and not evaluator._loss_patches and evaluator.model is None


def test_training_stops_after_training_steps_even_if_the_loop_would_go_on():
    model, seen = _mlp(), []
    evaluator = _evaluator(model, _data(), seen=seen)
    TaylorFOWeightPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], evaluator, training_steps=4).compress()
    assert len(seen) == 4


@pytest.mark.parametrize("bad", [{"training_steps": 0}, {"activation": "tanh"}, {"evaluator": object()}])
def test_bad_arguments_are_named(bad):
    model = _mlp()
    args = {"evaluator": _evaluator(model, _data()), "training_steps": 2, "activation": "relu", **bad}
    key = next(iter(bad))
    with pytest.raises((TypeError, ValueError), match=key):
        ActivationAPoZRankPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], **args)


class FourNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.bn1, self.bn2, self.bn3, self.bn4 = (nn.BatchNorm2d(8) for _ in range(4))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x)
        y = self.bn4(self.bn3(self.bn2(self.bn1(y))))
        return self.head(F.relu(y).mean((2, 3)))


def test_slim_ranks_each_config_at_its_own_ratio():
    torch.manual_seed(0)
    model = FourNorms()
    with torch.no_grad():  # bn1/bn2 and bn3/bn4 have very different scales
        for i, bn in enumerate((model.bn1, model.bn2, model.bn3, model.bn4)):
            bn.weight.copy_(torch.linspace(0.1, 1.0, 8) * (10.0 ** i))
    config = [{"op_names": ["bn1", "bn2"], "sparse_ratio": 0.25}, {"op_names": ["bn3", "bn4"], "sparse_ratio": 0.75}]
    pruner = SlimPruner(model, config, _evaluator(model, _image_data()), training_steps=2, regular_scale=0.0)
    _, masks = pruner.compress()
    pruned = {n: int((~masks[n]["weight"]).sum()) for n in ("bn1", "bn2", "bn3", "bn4")}
    assert pruned["bn1"] + pruned["bn2"] == 4  # floor(16 * 0.25), ranked across bn1 and bn2
    assert pruned["bn3"] + pruned["bn4"] == 12  # floor(16 * 0.75), ranked across bn3 and bn4
    assert pruned["bn1"] == 4 and pruned["bn3"] == 7  # the smaller scales of each group go first


@pytest.mark.parametrize("cls", [ActivationAPoZRankPruner, ActivationMeanRankPruner, TaylorFOWeightPruner, SlimPruner])
def test_a_training_loop_that_stops_early_is_an_error_saying_how_far_it_got(cls):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    data = _data(n=2)

    def short(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in data:  # one epoch of two batches, whatever max_steps says
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    evaluator = _evaluator(model, data)
    evaluator.training_func = short
    op = "BatchNorm1d" if cls is SlimPruner else "Linear"
    pruner = cls(model, [{"op_types": [op], "sparse_ratio": 0.5}], evaluator, training_steps=5)
    with pytest.raises(RuntimeError, match=r"ran 2 of the 5 optimizer steps"):
        pruner.compress()
    assert evaluator.steps_run == 2 and not pruner.masks


def test_the_evaluator_counts_the_steps_it_ran():
    model, data = _mlp(), _data()
    evaluator = _evaluator(model, data)
    with evaluator.session(model):
        evaluator.train(max_steps=3)
        assert evaluator.steps_run == 3
        evaluator.train(max_steps=1)
        assert evaluator.steps_run == 1
