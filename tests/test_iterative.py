"""LinearPruner and AGPPruner: scheduled rounds inside the user's training.

They take a built pruner as first argument, not ``(model, config_list)``; the contract
suite builds them around an L1NormPruner (``wraps``), and this file checks what is
particular to schedules (every round's exact counts, masks only grow, fine-tuning, data
pruners' statistics per round, state round trip).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from secateurs import (
    ActivationAPoZRankPruner,
    AGPPruner,
    FPGMPruner,
    L1NormPruner,
    LevelPruner,
    LinearPruner,
    ModelSpeedup,
    SlimPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
    get_masks,
)
from secateurs.pruners import DataPruner
from secateurs.schedules import agp, linear
from secateurs.sparsity import to_units

SCHEDULED = [pytest.param(LinearPruner, linear, id="linear"), pytest.param(AGPPruner, agp, id="agp")]
CONFIG = [{"op_types": ["default"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.7}]


def _dummy():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))


class Recorder:
    """A TorchEvaluator over random data whose loop snapshots the weights each step's
    forward pass uses (``module.weight``)."""

    def __init__(self, model, batches=4, repeat=10):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
                     for _ in range(batches)]
        self.repeat = repeat
        self.snapshots = []
        self.calls = 0

        def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
            self.calls += 1
            for batch in self.data * self.repeat:
                self.snapshots.append({name: m.weight.detach().clone() for name, m in model.named_modules()
                                       if isinstance(getattr(m, "weight", None), torch.Tensor)})
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()

        def step(batch, model):
            return F.cross_entropy(model(batch[0]), batch[1])

        self.evaluator = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01), step)


def _pruned(t, mask):
    return int((to_units(mask.float(), t.blocks, pad=0.0).amax(1) == 0).sum())


def _units(t):
    return math.prod(math.ceil(s / b) for s, b in zip(t.shape, t.blocks))


def _build(kind, model, rec, traced=False):
    kwargs = {"dummy_input": _dummy()} if traced else {}
    if kind == "taylorfo":
        return TaylorFOWeightPruner(model, CONFIG, rec.evaluator, 3, **kwargs)
    if kind == "apoz":
        return ActivationAPoZRankPruner(model, CONFIG, rec.evaluator, 3, **kwargs)
    if kind == "slim":  # its default op types are the norm layers
        return SlimPruner(model, [{"op_types": ["default"], "sparse_ratio": 0.7}], rec.evaluator, 3, **kwargs)
    return {"level": LevelPruner, "l1": L1NormPruner, "fpgm": FPGMPruner}[kind](model, CONFIG, **kwargs)


@pytest.mark.parametrize("traced", [pytest.param(False, id="no-trace"), pytest.param(True, id="traced")])
@pytest.mark.parametrize("kind", ["level", "l1", "fpgm", "taylorfo", "apoz", "slim"])
@pytest.mark.parametrize(("cls", "schedule"), SCHEDULED)
def test_each_round_realises_the_schedule_exactly_and_masks_only_grow(cls, schedule, kind, traced, cnn):
    if kind == "level" and traced:
        pytest.skip("element units are not coupled by the trace")
    rec = Recorder(cnn)
    params = sorted(id(p) for p in cnn.parameters())
    inner = _build(kind, cnn, rec, traced)
    pruner = cls(inner, interval_steps=3, total_times=4, evaluator=rec.evaluator)
    model, masks = pruner.compress(max_steps=20)
    # Four rounds of 3 steps, each a fresh call of the loop, then 8 steps of fine-tuning.
    assert model is cnn and len(rec.snapshots) == 20 and rec.calls == 5
    assert sorted(id(p) for p in cnn.parameters()) == params

    assert [r["round"] for r in pruner.history] == [1, 2, 3, 4]
    assert [r["step"] for r in pruner.history] == [3, 6, 9, 12]
    before = None
    for record in pruner.history:
        k = record["round"]
        assert record["sparse_ratio"] == dict.fromkeys(range(len(inner.config_list)), schedule(k, 4, 0.7))
        for t in inner.targets:
            expected = math.floor(_units(t) * schedule(k, 4, 0.7))
            assert _pruned(t, record["masks"][t.module_name][t.name]) == expected, (k, t.module_name)
            assert record["sparsity"][f"{t.module_name}.{t.name}"] == expected / _units(t)
        if before is not None:  # no unit (or element) comes back
            for module_name, entry in before.items():
                for target, old in entry.items():
                    assert not (record["masks"][module_name][target] & ~old).any(), (module_name, target)
        before = record["masks"]
        # Every step after the round trains with its masks: the pruned weights stay zero.
        end = pruner.history[k]["step"] if k < 4 else 20
        for snapshot in rec.snapshots[record["step"]:end]:
            for module_name, entry in record["masks"].items():
                if "weight" in entry:
                    assert not snapshot[module_name][~entry["weight"]].any(), (k, module_name)
    for module_name, entry in pruner.history[-1]["masks"].items():  # fine-tuning keeps the last masks
        for target, mask in entry.items():
            assert torch.equal(masks[module_name][target].cpu(), mask)
    # The wrapped pruner keeps its own config; its final ratio is the schedule's end.
    assert all(s.sparse_ratio == 0.7 for s in inner.settings.values())


@pytest.mark.parametrize(("cls", "schedule"), SCHEDULED)
def test_masked_model_equals_the_sped_up_model(cls, schedule, cnn, batch):
    rec = Recorder(cnn)
    pruner = cls(L1NormPruner(cnn, CONFIG, dummy_input=_dummy()), 2, 3, evaluator=rec.evaluator)
    _, masks = pruner.compress(max_steps=8)
    assert masks["bn1"]["weight"].tolist() == masks["conv1"]["bias"].tolist()  # dependency-aware
    cnn.eval()
    masked = cnn(batch)
    ModelSpeedup(cnn, _dummy(), masks).speedup_model()
    assert cnn.conv1.out_channels == 8 - math.floor(8 * 0.7)
    assert torch.allclose(cnn(batch), masked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("cls", "schedule"), SCHEDULED)
def test_a_short_budget_is_refused_before_training(cls, schedule, cnn):
    rec = Recorder(cnn)
    pruner = cls(LevelPruner(cnn, CONFIG), interval_steps=5, total_times=4, evaluator=rec.evaluator)
    with pytest.raises(ValueError, match=r"'max_steps' must be an int >= interval_steps \* total_times = "
                                         r"5 \* 4 = 20; got 19"):
        pruner.compress(max_steps=19)
    assert rec.calls == 0 and get_masks(cnn) == {}


@pytest.mark.parametrize(("cls", "schedule"), SCHEDULED)
def test_a_loop_that_stops_early_is_an_error(cls, schedule, cnn):
    rec = Recorder(cnn, batches=1, repeat=1)  # one step a call, for rounds of 2
    pruner = cls(LevelPruner(cnn, CONFIG), interval_steps=2, total_times=3, evaluator=rec.evaluator)
    with pytest.raises(RuntimeError, match=r"the training loop ran 1 of the 2 optimizer steps a round asks for"):
        pruner.compress()
    assert pruner.history == [] and get_masks(cnn) == {}


def test_without_limits_the_budget_is_exactly_the_rounds(cnn):
    rec = Recorder(cnn)
    pruner = AGPPruner(LevelPruner(cnn, CONFIG), 2, 3, evaluator=rec.evaluator)
    pruner.compress()
    assert len(rec.snapshots) == 6 and rec.calls == 3 and pruner.history[-1]["step"] == 6


def test_the_wrapped_data_pruners_evaluator_is_used(cnn):
    rec = Recorder(cnn)
    pruner = LinearPruner(TaylorFOWeightPruner(cnn, CONFIG, rec.evaluator, 3), 2, 2)
    pruner.compress(max_steps=4)
    assert rec.calls == 2 and len(pruner.history) == 2


def test_state_dict_holds_the_final_masks_and_restores_them(cnn):
    from tests.conftest import SmallCNN

    rec = Recorder(cnn)
    pruner = AGPPruner(L1NormPruner(cnn, CONFIG), 2, 2, evaluator=rec.evaluator)
    _, masks = pruner.compress(max_steps=4)
    torch.manual_seed(0)
    fresh = SmallCNN()
    AGPPruner(L1NormPruner(fresh, CONFIG), 2, 2, evaluator=Recorder(fresh).evaluator).load_state_dict(
        pruner.state_dict())
    attached = get_masks(fresh)
    for module_name, entry in masks.items():
        for target, mask in entry.items():
            assert torch.equal(attached[module_name][target], mask)


BAD = [
    (lambda m, ev: ("not a pruner", 2, 2, ev), TypeError, "'pruner' must be a secateurs pruner"),
    (lambda m, ev: (LevelPruner(m, CONFIG), 0, 2, ev), ValueError,
     "The 'interval_steps' parameter of {} must be a positive int; got 0."),
    (lambda m, ev: (LevelPruner(m, CONFIG), 2, 1.5, ev), ValueError,
     "The 'total_times' parameter of {} must be a positive int; got 1.5."),
    (lambda m, ev: (LevelPruner(m, CONFIG), 2, 2), TypeError, "LevelPruner has no evaluator, and none was given"),
    (lambda m, ev: (LevelPruner(m, CONFIG), 2, 2, "ev"), TypeError, "'evaluator' must be a secateurs Evaluator"),
    (lambda m, ev: (LevelPruner(m, [{"op_types": ["Conv2d"], "sparse_threshold": 0.1}]), 2, 2, ev), ValueError,
     r"config_list\[0\] of the wrapped pruner give no 'sparse_ratio'"),
]


@pytest.mark.parametrize(("args", "exc", "words"), BAD, ids=range(len(BAD)))
@pytest.mark.parametrize(("cls", "schedule"), SCHEDULED)
def test_bad_arguments_are_refused(cls, schedule, args, exc, words, cnn):
    with pytest.raises(exc, match=words.format(cls.__name__)):
        cls(*args(cnn, Recorder(cnn).evaluator))


class _CountingPruner(DataPruner):
    """Counts optimizer steps into its statistics; records each round's count."""

    def _install(self, evaluator):
        self.seen = getattr(self, "seen", [])

        def count():
            for t in self.targets:
                key = (t.module_name, t.name)
                self.stats[key] = self.stats.get(key, torch.zeros(_units(t), dtype=torch.float64)) + 1

        evaluator.after_optimizer_step(count)

    def _finish(self):
        self.seen.append({float(v.max()) for v in self.stats.values()})


def test_data_pruners_score_each_round_on_the_interval_before_it(cnn):
    rec = Recorder(cnn)
    inner = _CountingPruner(cnn, CONFIG, rec.evaluator, 1)
    AGPPruner(inner, interval_steps=3, total_times=4).compress(max_steps=15)
    assert inner.seen == [{3.0}] * 4  # statistics are reset after each round
    assert {float(v.max()) for v in inner.stats.values()} == {3.0}  # the last round's, kept for state_dict


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_progress_shows_one_line_per_round_on_stderr_when_asked(progress, shown, cnn, capsys):
    rec = Recorder(cnn)
    pruner = AGPPruner(LevelPruner(cnn, CONFIG), 1, 3, evaluator=rec.evaluator, progress=progress)
    pruner.compress()
    err = capsys.readouterr().err
    # None: only on a terminal, and pytest's captured stderr is not one.
    assert ("AGPPruner round 3/3" in err and "sparsity" in err and err.endswith("\n")) == shown
    assert (err == "") == (not shown)


def test_progress_must_be_a_bool_or_none(cnn):
    with pytest.raises(TypeError, match="'progress' parameter of LinearPruner"):
        LinearPruner(LevelPruner(cnn, CONFIG), 1, 2, evaluator=Recorder(cnn).evaluator, progress="yes")
