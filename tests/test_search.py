"""The search pruners' budgets (sparsity, FLOPs, params: exact, tight, never emptying a
layer or a branch) and SimulatedAnnealingPruner: known optimum, determinism, executors,
resume, history and plot."""

from __future__ import annotations

import copy
import json
import math
import warnings
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import torch.nn as nn

from secateurs import ModelSpeedup, SimulatedAnnealingPruner
from secateurs.analysis import count_flops_params


class Inception(nn.Module):
    """A stem, two Inception-style blocks (four branches concatenated), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList()
        c = 16
        for _ in range(2):
            self.blocks.append(nn.ModuleDict({
                "b1": nn.Conv2d(c, 8, 1),
                "b3": nn.Sequential(nn.Conv2d(c, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1)),
                "b5": nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2)),
                "pool": nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 4, 1)),
            }))
            c = 24
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(torch.cat([b["b1"](x), b["b3"](x), b["b5"](x), b["pool"](x)], 1))
        return self.head(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv4 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + self.conv3(torch.relu(self.conv2(x)))  # conv1 and conv3 share channels
        return self.fc(torch.relu(self.conv4(x)).mean((2, 3)))


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _model(cls):
    torch.manual_seed(0)
    model = cls()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def flat_score(model: nn.Module) -> float:
    """A score every candidate ties on (module level: picklable for process pools)."""
    return 0.0


def conv_cost_score(model: nn.Module) -> float:
    """Known optimum: pruning the first conv's weights costs ten times what the others do."""
    total = 0.0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            pruned = float((m.weight == 0).float().mean())
            total += (10.0 if name == "conv1" else 1.0) * pruned
    return -total


def weight_sum_score(model: nn.Module) -> float:
    """Deterministic and sensitive to which weights are kept."""
    return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.Conv2d)))


def _sa(model, ratio, target="sparsity", algorithm="l1", score=flat_score, **kw):
    config = [{"op_types": ["Conv2d"], "sparse_ratio": ratio}]
    kw.setdefault("max_evaluations", 3)
    return SimulatedAnnealingPruner(model, config, score, pruning_algorithm=algorithm, target=target, seed=3,
                                    dummy_input=X, **kw)


def _sped_up(model, masks):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ModelSpeedup(model, X, masks).speedup_model()
    return model


@pytest.mark.parametrize("target", ["sparsity", "flops", "params"])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("cls", [Residual, Inception])
def test_every_result_meets_its_budget_tightly_and_empties_no_layer_or_branch(cls, ratio, target):
    model = _model(cls)
    dense_flops, dense_params, _ = count_flops_params(model, X)
    selected = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    if (cls, target, ratio) == (Inception, "params", 0.95):  # the head and one channel per layer hold 5.4%
        with pytest.raises(ValueError, match="removes only 0.946"):
            _sa(model, ratio, target)
        return
    pruner = _sa(model, ratio, target)
    _, masks = pruner.compress()
    counts = torch.tensor(pruner.get_best_result()[0] and pruner._best[0])
    assert pruner.space.tight(counts)
    for entry in pruner.history:  # every candidate, not only the best
        assert pruner.space.tight(torch.tensor(entry["counts"]))
    if target == "sparsity":
        zeros = sum(int((~masks[n]["weight"]).sum()) for n, m in model.named_modules()
                    if isinstance(m, nn.Conv2d) and n in masks)
        assert zeros >= ratio * selected
        assert pruner.space.reached(counts) == pytest.approx(zeros / selected)
    pruned = _sped_up(copy.deepcopy(model), masks)
    flops, params, _ = count_flops_params(pruned, X)
    if target == "flops":
        assert flops <= (1 - ratio) * dense_flops
        assert 1 - flops / dense_flops == pytest.approx(pruner.space.reached(counts), abs=1e-12)
    if target == "params":
        assert params <= (1 - ratio) * dense_params
        assert 1 - params / dense_params == pytest.approx(pruner.space.reached(counts), abs=1e-12)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 1 and m.in_channels >= 1
    if cls is Inception:
        for b in pruned.blocks:  # every branch of every concatenation keeps a channel
            outs = [b["b1"].out_channels, b["b3"][2].out_channels, b["b5"][2].out_channels, b["pool"][1].out_channels]
            assert min(outs) >= 1
    out = pruned(X)
    assert out.shape == (2, 10)


def test_max_sparse_ratio_caps_each_layer_and_an_unreachable_budget_is_refused_before_anything_changes():
    model = _model(Residual)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.6}]
    pruner = SimulatedAnnealingPruner(model, config, flat_score, pruning_algorithm="l1", dummy_input=X, seed=0,
                                      max_evaluations=4)
    pruner.compress()
    for v, c in zip(pruner.space.variables, pruner._best[0]):
        assert c <= math.floor(0.6 * v.n)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="max_sparse_ratio"):
        SimulatedAnnealingPruner(_model(Residual), [{"op_types": ["Conv2d"], "sparse_ratio": 0.7,
                                                     "max_sparse_ratio": 0.3}], flat_score, dummy_input=X)
    with pytest.raises(ValueError, match="out of reach"):  # FLOPs mostly outside the selected layer
        SimulatedAnnealingPruner(model, [{"op_names": ["conv4"], "sparse_ratio": 0.9}], flat_score,
                                 pruning_algorithm="l1", target="flops", dummy_input=X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, match", [
    ({"target": "flops", "pruning_algorithm": "level"}, "whole channels"),
    ({"target": "latency"}, "'target'"),
    ({"pruning_algorithm": "taylor"}, "'pruning_algorithm'"),
    ({"cool_down_rate": 1.0}, "'cool_down_rate'"),
    ({"stop_temperature": 200}, "'stop_temperature'"),
    ({"pruning_params": {"mode": "dependency_aware"}}, "'pruning_params'"),
    ({"max_evaluations": 0}, "'max_evaluations'"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SimulatedAnnealingPruner(_model(Residual), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], flat_score,
                                 dummy_input=X, **kwargs)


def test_flops_without_a_trace_and_mixed_ratios_are_refused():
    with pytest.raises(ValueError, match="dummy_input"):
        SimulatedAnnealingPruner(_model(Residual), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], flat_score,
                                 pruning_algorithm="l1", target="flops")
    with pytest.raises(ValueError, match="same one"):
        SimulatedAnnealingPruner(_model(Residual), [{"op_names": ["conv1"], "sparse_ratio": 0.5},
                                                    {"op_names": ["conv4"], "sparse_ratio": 0.7}], flat_score)
    with pytest.raises(TypeError, match="evaluator"):
        SimulatedAnnealingPruner(_model(Residual), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], "accuracy")


def test_annealing_finds_the_known_optimum_far_better_than_uniform():
    model = _model(Residual)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    pruner = SimulatedAnnealingPruner(model, config, conv_cost_score, pruning_algorithm="level", seed=0,
                                      stop_temperature=1, perturbation_magnitude=0.5)
    _, masks = pruner.compress()
    space = pruner.space
    uniform = space.fit([0.5] * len(space.variables))
    (uniform_score,) = pruner.evaluate([uniform])
    best = pruner.get_best_result()
    # Optimum: conv1 (432 weights, costly) untouched, the largest layer (conv4, 4608) as far as it
    # goes (one weight kept) and the rest of the 4824 weights from conv2 or conv3.
    optimum = -(4607 / 4608 + (4824 - 4607) / 2304)
    assert best[1] > uniform_score + 4.0
    assert best[1] == pytest.approx(optimum, abs=0.05)
    assert best[2]["conv1.weight"] < 0.05
    assert conv_cost_score(model) == pytest.approx(best[1])  # the model holds the best candidate
    assert len(pruner.history) == pruner.steps + 1 == 45


def test_same_seed_same_result_and_a_process_pool_scores_as_serial_evaluation_does():
    runs = []
    for executor in (None, None, "pool"):
        model = _model(Residual)
        pool = ProcessPoolExecutor(2) if executor else None
        try:
            pruner = _sa(model, 0.5, "flops", score=weight_sum_score, max_evaluations=None, executor=pool,
                         candidates_per_step=2, stop_temperature=60)
            pruner.compress()
        finally:
            if pool is not None:
                pool.shutdown()
        runs.append((pruner._best, [(e["counts"], e["score"], e["accepted"]) for e in pruner.history]))
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0][1]) == 1 + 2 * 5


class Crash(Exception):
    pass


def test_a_search_killed_midway_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    full = _sa(_model(Residual), 0.5, "flops", score=weight_sum_score, max_evaluations=None)
    full.compress()
    calls = [0]

    def crashing(model):
        calls[0] += 1
        if calls[0] == 7:
            raise Crash()
        return weight_sum_score(model)

    model = _model(Residual)
    with pytest.raises(Crash):
        _sa(model, 0.5, "flops", score=crashing, max_evaluations=None, checkpoint_dir=tmp_path).compress()
    assert not any(n.endswith("_mask") or "parametrizations" in n for n in model.state_dict())  # untouched
    resumed = _sa(model, 0.5, "flops", score=weight_sum_score, max_evaluations=None, checkpoint_dir=tmp_path)
    resumed.compress()
    assert resumed._best == full._best
    assert [(e["counts"], e["score"]) for e in resumed.history] == [(e["counts"], e["score"]) for e in full.history]
    with pytest.raises(ValueError, match="seed"):  # another run's folder is refused, naming what differs
        SimulatedAnnealingPruner(_model(Residual), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], flat_score,
                                 pruning_algorithm="l1", target="flops", seed=4, dummy_input=X,
                                 checkpoint_dir=tmp_path).compress()


def test_history_is_written_as_json_and_plotted_as_png(tmp_path):
    pruner = _sa(_model(Residual), 0.5, max_evaluations=5)
    pruner.compress()
    pruner.save_history(tmp_path / "h.json")
    entries = json.loads((tmp_path / "h.json").read_text())
    assert len(entries) == 5 and {"sparsity", "budget", "score", "accepted", "counts"} <= set(entries[0])
    assert all(e["budget"] >= 0.5 for e in entries)
    pruner.plot_history(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
