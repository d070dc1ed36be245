"""AMCPruner: known optimum, exact tight budgets, determinism, executors, resume, bad input."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import torch.nn as nn

from secateurs import AMCPruner

X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
FAST = {"hidden1": 32, "hidden2": 32, "warmup": 8, "bsize": 16}


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def _model():
    torch.manual_seed(0)
    return CNN().eval()


def _pruned(m: nn.Conv2d) -> float:
    return float((m.weight.flatten(1) == 0).all(1).float().mean())


def costly_conv2_score(model: nn.Module) -> float:
    """Known optimum: pruning conv2's channels costs a hundred times what the others do."""
    return -(100.0 * _pruned(model.conv2) + _pruned(model.conv1) + _pruned(model.conv3))


def weight_sum_score(model: nn.Module) -> float:
    """Deterministic and sensitive to which weights are kept (module level: picklable)."""
    return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.Conv2d)))


def _amc(ratio=0.5, target="flops", score=weight_sum_score, total_episode=14, ddpg=None, **kw):
    config = [{"op_types": ["Conv2d"], "sparse_ratio": ratio}]
    return AMCPruner(_model(), config, score, total_episode, target=target, ddpg_params=ddpg or dict(FAST),
                     dummy_input=X, seed=kw.pop("seed", 1), **kw)


def test_amc_finds_the_known_optimum_far_better_than_uniform():
    pruner = _amc(0.3, score=costly_conv2_score, total_episode=40)
    model, _ = pruner.compress()
    space = pruner.space
    best = torch.tensor(pruner._best[0])
    assert space.tight(best)
    (uniform,) = pruner.evaluate([space.fit([0.3] * len(space.variables))])
    assert pruner._best[1] > uniform + 10
    assert _pruned(model.conv2) < min(_pruned(model.conv1), _pruned(model.conv3))
    assert costly_conv2_score(model) == pytest.approx(pruner._best[1])  # the model holds the best candidate
    assert len(pruner.history) == 40 and sum(e["warmup"] for e in pruner.history) == 8


@pytest.mark.parametrize("target", ["flops", "params", "sparsity"])
def test_every_episode_meets_its_budget_tightly_and_empties_no_layer(target):
    for ratio in (0.1, 0.5, 0.8, 0.9, 0.95):
        pruner = _amc(ratio, target, total_episode=3, ddpg={**FAST, "warmup": 1})
        pruner.compress()
        space = pruner.space
        for entry in pruner.history:
            counts = torch.tensor(entry["counts"])
            assert space.tight(counts), (target, ratio, entry["counts"])
            assert entry["budget"] >= ratio - 1e-9
            assert bool((counts < space.n).all())


def test_round_to_keeps_multiples_where_the_budget_allows():
    pruner = _amc(0.5, round_to=4, total_episode=3, ddpg={**FAST, "warmup": 3})
    pruner.compress()
    for entry in pruner.history:
        assert pruner.space.tight(torch.tensor(entry["counts"]))


def test_same_seed_same_result_and_a_process_pool_scores_as_serial_evaluation_does():
    runs = []
    for executor in (None, None, "pool"):
        pool = ProcessPoolExecutor(2) if executor else None
        try:
            pruner = _amc(executor=pool)
            pruner.compress()
        finally:
            if pool is not None:
                pool.shutdown()
        runs.append((pruner._best, [(e["counts"], e["score"], e["reward"]) for e in pruner.history]))
    assert runs[0] == runs[1] == runs[2]
    other = _amc(seed=2)
    other.compress()
    assert [e["counts"] for e in other.history] != [e[0] for e in runs[0][1]]


class Crash(Exception):
    pass


def test_a_search_killed_midway_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    full = _amc()
    full.compress()
    calls = [0]

    def crashing(model):
        calls[0] += 1
        if calls[0] == 11:  # three policy episodes after the eight of the warm-up
            raise Crash()
        return weight_sum_score(model)

    with pytest.raises(Crash):
        _amc(score=crashing, checkpoint_dir=tmp_path).compress()
    resumed = _amc(checkpoint_dir=tmp_path)
    resumed.compress()
    assert len(resumed.history) == len(full.history) == 14
    assert resumed._best == full._best
    assert [(e["counts"], e["score"], e["reward"]) for e in resumed.history] == \
        [(e["counts"], e["score"], e["reward"]) for e in full.history]
    again = _amc(checkpoint_dir=tmp_path)  # a finished run's folder gives its result at once
    again.compress()
    assert again._best == full._best


@pytest.mark.parametrize("kwargs, match", [
    ({"ddpg": {"hidden3": 4}}, "hidden3"),
    ({"ddpg": {"tau": 2}}, "tau"),
    ({"total_episode": 0}, "total_episode"),
    ({"target": "foo"}, "target"),
    ({"round_to": 0}, "round_to"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _amc(**kwargs)
