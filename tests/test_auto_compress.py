"""AutoCompressPruner: rounds of search then ADMM, each meeting its round's budget exactly."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secateurs import AutoCompressPruner, ModelSpeedup, TorchEvaluator
from secateurs.analysis import count_flops_params


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4))


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(4)]


DATA = _data()
X = DATA[0][0][:2]


def _evaluator(model):
    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in DATA * 10:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    def accuracy(model):
        with torch.no_grad():
            return float(sum((model(x).argmax(1) == y).float().mean() for x, y in DATA)) / len(DATA) + \
                float(sum(F.cross_entropy(model(x), y) for x, y in DATA)) * -1e-3

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.05),
                          lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]), evaluating_func=accuracy,
                          dummy_input=X)


CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": 0.6}]


def _run(tmp=None, **sa):
    model = _net()
    pruner = AutoCompressPruner(model, CONFIG, _evaluator(model), total_iteration=2,
                                admm_params={"iterations": 2, "training_steps": 3},
                                sa_params={"target": "flops", "stop_temperature": 60, **sa}, seed=0,
                                checkpoint_dir=tmp)
    _, masks = pruner.compress()
    return model, pruner, masks


def test_each_round_meets_its_budget_and_the_last_the_final_flops_budget():
    dense = _net()
    dense_flops = count_flops_params(dense, X)[0]
    model, pruner, masks = _run()
    assert [h["ratio"] for h in pruner.history] == pytest.approx([1 - 0.4 ** 0.5, 0.6])
    assert pruner.history[0]["budget"] >= 1 - 0.4 ** 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = ModelSpeedup(copy.deepcopy(model), X, masks).speedup_model()
    flops = count_flops_params(small, X)[0]
    assert flops <= 0.4 * dense_flops
    assert 1 - flops / dense_flops == pytest.approx(pruner.history[-1]["budget"])
    assert all(isinstance(h["score"], float) for h in pruner.history)


def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path):
    model, pruner, masks = _run(tmp_path)
    again, pruner2, masks2 = _run(tmp_path)  # finished: restored, nothing trained
    assert pruner2.history == pruner.history
    assert all(torch.equal(masks[m][t], masks2[m][t]) for m in masks for t in masks[m])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_bad_params_are_refused_naming_the_key():
    model = _net()
    with pytest.raises(ValueError, match="'trainer'"):
        AutoCompressPruner(model, CONFIG, _evaluator(model), admm_params={"trainer": 1, "training_steps": 2})
    with pytest.raises(ValueError, match="training_steps"):
        AutoCompressPruner(model, CONFIG, _evaluator(model), admm_params={"iterations": 2})
    with pytest.raises(TypeError, match="Evaluator"):
        AutoCompressPruner(model, CONFIG, lambda m: 0.0, admm_params={"training_steps": 2})


def test_a_run_killed_in_the_second_round_resumes_to_the_uninterrupted_result(tmp_path):
    full_model, full, full_masks = _run()
    model = _net()
    evaluator = _evaluator(model)
    honest = evaluator.evaluating_func
    calls = [0]

    def crashing(m):
        calls[0] += 1
        if calls[0] == 10:  # round 2, third candidate (each round: 6 candidates, then 1 score)
            raise KeyboardInterrupt
        return honest(m)

    evaluator.evaluating_func = crashing
    pruner = AutoCompressPruner(model, CONFIG, evaluator, total_iteration=2,
                                admm_params={"iterations": 2, "training_steps": 3},
                                sa_params={"target": "flops", "stop_temperature": 60}, seed=0,
                                checkpoint_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        pruner.compress()
    model2 = _net()
    resumed = AutoCompressPruner(model2, CONFIG, _evaluator(model2), total_iteration=2,
                                 admm_params={"iterations": 2, "training_steps": 3},
                                 sa_params={"target": "flops", "stop_temperature": 60}, seed=0,
                                 checkpoint_dir=tmp_path)
    _, masks = resumed.compress()
    assert resumed.history == full.history
    assert all(torch.equal(full_masks[m][t], masks[m][t]) for m in masks for t in masks[m])
    assert all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(), model2.state_dict().values()))
