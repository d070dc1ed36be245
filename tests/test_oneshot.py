"""secateurs.prune: the one-call form, its report, and its errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import secateurs
from secateurs import ModelSpeedup, PruneReport, TorchEvaluator, count_flops_params, get_masks


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


X = torch.randn(2, 3, 12, 12)


def evaluator(model: nn.Module) -> TorchEvaluator:
    data = [(torch.randn(4, 3, 12, 12), torch.randint(0, 4, (4,))) for _ in range(4)]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in data * 10:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01),
                          lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]), dummy_input=X)


def test_speedup_true_returns_the_shrunk_model_and_exact_numbers():
    model = net()
    reference = copy.deepcopy(model)
    pruned, report = secateurs.prune(model, "l1norm", sparse_ratio=0.5, op_types=["Conv2d"], dummy_input=X,
                                     speedup=True)
    assert pruned is model and not get_masks(model)
    assert model[0].out_channels == 4 and model[3].out_channels == 8
    macs, params, _ = count_flops_params(model, X)
    dense_macs, dense_params, _ = count_flops_params(reference, X)
    assert (report.macs_before, report.params_before) == (dense_macs, dense_params)
    assert (report.macs_after, report.params_after) == (macs, params)
    assert report.sped_up and report.max_rel_diff <= 1e-4
    rows = {r.name: r for r in report.layers}
    assert rows["0"].config_index == 0 and rows["0"].config == {"sparse_ratio": 0.5, "op_types": ["Conv2d"]}
    assert rows["1"].config_index is None and rows["1"].sparsity == 0.5  # follows conv 0
    assert rows["0"].params_after == 4 * 27 + 4 and rows["7"].params_after == 4 * 8 + 4
    # The masks the pruner made are kept on the report.
    assert int((~report.masks["0"]["weight"]).flatten(1).all(1).sum()) == 4


def test_without_speedup_the_masks_stay_and_after_is_what_the_speedup_gives():
    model = net()
    _, report = secateurs.prune(model, "l2norm", sparse_ratio=0.5, op_types=["Conv2d"], dummy_input=X)
    assert get_masks(model) and model[0].weight.shape == (8, 3, 3, 3)
    assert not report.sped_up and math.isnan(report.max_abs_diff)
    shrunk = copy.deepcopy(model)
    ModelSpeedup(shrunk, X).speedup_model()
    macs, params, _ = count_flops_params(shrunk, X)
    assert (report.macs_after, report.params_after) == (macs, params)


def test_unstructured_pruning_lowers_nonzero_params_not_shapes():
    model = net()
    _, report = secateurs.prune(model, "level", sparse_ratio=0.75, op_types=["Conv2d"], dummy_input=X, speedup=True)
    conv_weights = 8 * 27 + 16 * 72
    assert report.params_after == report.params_before
    assert report.params_before - report.nonzero_params == math.floor(0.75 * 8 * 27) + math.floor(0.75 * 16 * 72)
    assert report.params_before - report.nonzero_params < conv_weights


def test_report_round_trips_and_renders():
    _, report = secateurs.prune(net(), "fpgm", sparse_ratio=0.25, op_types=["Conv2d"], dummy_input=X)
    again = PruneReport.from_dict(report.to_dict())
    assert again.to_dict() == report.to_dict()
    text = str(report)
    assert text.splitlines()[0].startswith("fpgm: parameters ")
    assert "| 0 | Conv2d | [0] | 25.00% |" in report.to_markdown()
    with pytest.raises(ValueError, match="not a secateurs prune report"):
        PruneReport.from_dict({"format": "other"})


def test_plots_are_pngs(tmp_path):
    _, report = secateurs.prune(net(), "l1norm", sparse_ratio=0.5, op_types=["Conv2d"], dummy_input=X)
    paths = report.plot(tmp_path)
    assert [p.name for p in paths] == ["kept_fraction.png", "params_macs.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_data_driven_and_scheduled_pruners_take_their_arguments():
    model = net()
    _, report = secateurs.prune(model, "taylorfo", sparse_ratio=0.5, op_types=["Conv2d"], dummy_input=X,
                                evaluator=evaluator(model), training_steps=3)
    assert {r.name: r.sparsity for r in report.layers}["0"] == 0.5
    model = net()
    _, report = secateurs.prune(model, "agp", sparse_ratio=0.5, op_types=["Conv2d"], dummy_input=X,
                                evaluator=evaluator(model), pruning_algorithm="l1norm", interval_steps=2,
                                total_times=3, progress=False)
    assert {r.name: r.sparsity for r in report.layers}["0"] == 0.5


def score(model: nn.Module) -> float:
    with torch.no_grad():
        return -float(model(X).abs().sum())


def test_search_pruner_takes_a_plain_score():
    model = net()
    _, report = secateurs.prune(model, "simulated_annealing", sparse_ratio=0.5, op_types=["Conv2d"],
                                dummy_input=X, evaluator=score, seed=0, max_evaluations=4,
                                pruning_algorithm="l1norm", target="flops", progress=False)
    # The budget is half the FLOPs of the selected layers' model: met, not overshot by more than a channel.
    assert 0.4 < report.macs_ratio <= 0.5


@pytest.mark.parametrize("kwargs, error, message", [
    ({}, ValueError, "give either config_list or sparse_ratio"),
    ({"sparse_ratio": 0.5, "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}, ValueError,
     "give either config_list or sparse_ratio"),
    ({"sparse_ratio": 0.5, "speedup": True}, ValueError, "speedup=True needs dummy_input"),
    ({"sparse_ratio": 0.5, "pruner": "taylorfo"}, TypeError, "TaylorFOWeightPruner needs 'training_steps'"),
    ({"sparse_ratio": 0.5, "pruner": "taylorfo", "training_steps": 2}, TypeError, "needs an evaluator"),
    ({"sparse_ratio": 0.5, "pruner": "l1norm", "trainig_steps": 2}, TypeError,
     "L1NormPruner has no argument 'trainig_steps'"),
    ({"sparse_ratio": 0.5, "pruner": "l1nrm"}, KeyError, "unknown pruner 'l1nrm'"),
    ({"sparse_ratio": 0.5, "pruner": "agp", "pruning_algorithm": "taylorfo", "interval_steps": 1, "total_times": 2},
     ValueError, "schedules a one-shot pruner"),
    ({"sparse_ratio": 0.5, "evaluator": lambda m: 1.0}, TypeError, "L1NormPruner is one-shot and takes no evaluator"),
])
def test_errors_name_what_is_wrong_and_leave_the_model_alone(kwargs, error, message):
    model = net()
    before = copy.deepcopy(model.state_dict())
    pruner = kwargs.pop("pruner", "l1norm")
    with pytest.raises(error, match=message):
        secateurs.prune(model, pruner, **kwargs)
    assert not get_masks(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
