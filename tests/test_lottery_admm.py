"""Known answers for LotteryTicketPruner and ADMMPruner (the contract suite covers what all
pruners share): each round's exact counts, the ticket, late rewinding, the optimizer reset;
ADMM's Z, U, penalty and its gradient."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from secateurs import ADMMPruner, LotteryTicketPruner, ModelSpeedup, TorchEvaluator, get_masks
from secateurs.schedules import lottery
from secateurs.sparsity import to_units

CONFIG = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.8}]


def _dummy():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))


class Loop:
    """A TorchEvaluator (SGD with momentum) whose loop snapshots the stored tensors each
    step's forward starts from."""

    def __init__(self, model, lr=0.05, momentum=0.9, loss=None, evaluate=True):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
                     for _ in range(4)]
        self.snapshots, self.calls = [], 0

        def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
            self.calls += 1
            for batch in self.data * 10:
                self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()

        def step(batch, model):
            out = model(batch[0])
            return F.cross_entropy(out, batch[1]) if loss is None else loss(out)

        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        self.evaluator = TorchEvaluator(loop, self.optimizer, step,
                                        evaluating_func=(lambda m: 0.5) if evaluate else None)


def _pruned(t, mask):
    return int((to_units(mask.float(), t.blocks, pad=0.0).amax(1) == 0).sum())


def _units(t):
    return math.prod(math.ceil(s / b) for s, b in zip(t.shape, t.blocks))


def _stored(model):
    """name -> the stored value of every parameter and buffer (masked ones: their original)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            if not key.endswith(".original"):
                continue
            head, _, rest = key.partition(".parametrizations.")
            key = f"{head}.{rest.split('.')[0]}"
        out[key] = value
    return out


# -- LotteryTicket ---------------------------------------------------------------------

def test_each_round_prunes_the_same_fraction_of_the_survivors_and_the_ticket_is_init_times_mask(cnn):
    init = {k: v.clone() for k, v in cnn.state_dict().items()}
    run = Loop(cnn)
    pruner = LotteryTicketPruner(cnn, CONFIG, run.evaluator, total_iteration=3, training_steps=5)
    model, masks = pruner.compress()
    assert model is cnn and run.calls == 3 and len(run.snapshots) == 15
    for record in pruner.history:
        k = record["round"]
        assert record["sparse_ratio"] == {0: lottery(k, 3, 0.8)} and record["score"] == 0.5
        for t in pruner.targets:
            expected = math.floor(_units(t) * lottery(k, 3, 0.8))
            assert _pruned(t, record["masks"][t.module_name][t.name]) == expected, (k, t.module_name)
    # Each round trained from the initial weights, masked by the rounds before it.
    for k in (1, 2):
        start = run.snapshots[5 * k]
        for name, value in init.items():
            module = name.rsplit(".", 1)[0]
            prev = pruner.history[k - 1]["masks"].get(module, {}).get(name.rsplit(".", 1)[1])
            stored = _stored_like(start, name)
            assert torch.equal(stored, value if prev is None else value * prev), (k, name)
    # The ticket: every parameter and buffer back at its initial value, masked.
    effective = {n: getattr(cnn.get_submodule(n.rsplit(".", 1)[0]), n.rsplit(".", 1)[1]) for n in init}
    for name, value in init.items():
        mask = masks.get(name.rsplit(".", 1)[0], {}).get(name.rsplit(".", 1)[1])
        assert torch.equal(effective[name], value if mask is None else value * mask), name
    # and the optimizer starts afresh (no momentum left from the last round).
    assert run.optimizer.state_dict()["state"] == {}


def _stored_like(state, name):
    """A snapshot's stored value for ``name``, masked or not."""
    if name in state:
        return state[name]
    head, attr = name.rsplit(".", 1)
    return state[f"{head}.parametrizations.{attr}.original"]


def test_late_rewinding_resets_to_the_weights_and_momentum_after_step_k(cnn):
    run = Loop(cnn)
    pruner = LotteryTicketPruner(cnn, CONFIG, run.evaluator, total_iteration=2, training_steps=5, rewind_step=2)
    # The momentum after step 2, recorded by a twin run (same seed, same data).
    torch.manual_seed(0)
    twin = type(cnn)()
    twin_run = Loop(twin)
    twin_opt = twin_run.optimizer
    batches = twin_run.data
    for batch in batches[:2]:
        twin_opt.zero_grad()
        F.cross_entropy(twin(batch[0]), batch[1]).backward()
        twin_opt.step()
    _, masks = pruner.compress()
    rewound = run.snapshots[2]  # what step 3's forward started from: the weights after step 2
    for name, value in rewound.items():
        head, attr = name.rsplit(".", 1)
        mask = masks.get(head, {}).get(attr)
        live = getattr(cnn.get_submodule(head), attr)
        assert torch.equal(live, value if mask is None else value * mask), name
        assert torch.equal(value, twin.state_dict()[name]), name
    state = run.optimizer.state_dict()["state"]
    twin_state = twin_opt.state_dict()["state"]
    assert state.keys() == twin_state.keys() and state
    for index in state:
        assert torch.equal(state[index]["momentum_buffer"], twin_state[index]["momentum_buffer"])


def test_without_reset_the_weights_keep_training_and_global_groups_count_together(cnn):
    init = {k: v.clone() for k, v in cnn.state_dict().items()}
    run = Loop(cnn, evaluate=False)
    config = [{**CONFIG[0], "global_group_id": 0}]
    pruner = LotteryTicketPruner(cnn, config, run.evaluator, total_iteration=2, training_steps=3, reset_weight=False)
    _, masks = pruner.compress()
    assert all(r["score"] is None for r in pruner.history)  # no evaluating_func: no score
    assert not torch.equal(cnn.fc2.weight, init["fc2.weight"])
    total = sum(_units(t) for t in pruner.targets)
    pruned = sum(_pruned(t, masks[t.module_name][t.name]) for t in pruner.targets)
    assert pruned == math.floor(total * 0.8)


def test_channel_tickets_speed_up_exactly(cnn, batch):
    run = Loop(cnn)
    pruner = LotteryTicketPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], run.evaluator,
                                 total_iteration=2, training_steps=3, pruning_algorithm="l1", dummy_input=_dummy())
    _, masks = pruner.compress()
    cnn.eval()
    masked = cnn(batch)
    ModelSpeedup(cnn, _dummy(), masks).speedup_model()
    assert cnn.conv1.out_channels == 4 and cnn.conv2.out_channels == 8
    assert torch.allclose(cnn(batch), masked, rtol=1e-4, atol=1e-5)


LT_BAD = [
    (dict(total_iteration=0), ValueError, "The 'total_iteration' parameter of LotteryTicketPruner must be a positive"),
    (dict(training_steps=None), ValueError, "give 'training_steps' or 'training_epochs'"),
    (dict(rewind_step=6), ValueError, r"'rewind_step' \(6\) must lie within the first round, which trains 5 steps"),
    (dict(rewind_step=2, reset_weight=False), ValueError, "'reset_weight' is False"),
    (dict(pruning_algorithm="taylor"), ValueError, "'pruning_algorithm' parameter of LotteryTicketPruner must be "
                                                   "one of"),
    (dict(reset_weight=1), TypeError, "'reset_weight' parameter of LotteryTicketPruner must be True or False"),
    (dict(progress="yes"), TypeError, "'progress' parameter of LotteryTicketPruner"),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), LT_BAD, ids=range(len(LT_BAD)))
def test_bad_lottery_arguments_are_refused_before_anything_changes(kwargs, exc, words, cnn):
    run = Loop(cnn)
    with pytest.raises(exc, match=words):
        LotteryTicketPruner(cnn, CONFIG, run.evaluator, **{"training_steps": 5, **kwargs})
    assert run.calls == 0 and get_masks(cnn) == {}


def test_a_threshold_config_is_refused(cnn):
    with pytest.raises(ValueError, match=r"LotteryTicketPruner: config_list\[0\] give no 'sparse_ratio'"):
        LotteryTicketPruner(cnn, [{"op_types": ["Linear"], "sparse_threshold": 0.1}], Loop(cnn).evaluator,
                            training_steps=2)


# -- ADMM --------------------------------------------------------------------------------

def _keys(pruner):
    return [(t.module_name, t.name) for t in pruner.targets]


def test_penalty_and_its_gradient_are_the_papers(cnn):
    pruner = ADMMPruner(cnn, [{**CONFIG[0], "rho": 0.3}], Loop(cnn).evaluator, iterations=1, training_steps=1)
    g = torch.Generator().manual_seed(3)
    weights = {k: getattr(cnn.get_submodule(k[0]), k[1]) for k in _keys(pruner)}
    pruner.Z = {k: torch.randn(w.shape, generator=g) for k, w in weights.items()}
    pruner.U = {k: torch.randn(w.shape, generator=g) for k, w in weights.items()}
    value = pruner.penalty()
    expected = sum(0.3 / 2 * (w - pruner.Z[k] + pruner.U[k]).square().sum() for k, w in weights.items())
    assert torch.allclose(value, expected)
    value.backward()
    for k, w in weights.items():
        assert torch.allclose(w.grad, 0.3 * (w - pruner.Z[k] + pruner.U[k]), atol=1e-6), k


def test_z_u_and_the_masks_follow_the_admm_updates(cnn):
    # With a zero task loss and plain SGD (lr 1), one step moves W by -rho * (W - Z + U) exactly.
    rho, lr = 0.25, 1.0
    run = Loop(cnn, lr=lr, momentum=0.0, loss=lambda out: 0.0 * out.sum())
    pruner = ADMMPruner(cnn, [{**CONFIG[0], "rho": rho}], run.evaluator, iterations=3, training_steps=1)
    keys = _keys(pruner)

    def project(v):  # keep the 20% largest |v| of each tensor
        out = {}
        for k, vk in v.items():
            n = vk.numel()
            keep = vk.abs().flatten().argsort(descending=True)[: n - math.floor(n * 0.8)]
            flat = torch.zeros(n)
            flat[keep] = vk.flatten()[keep]
            out[k] = flat.reshape(vk.shape)
        return out

    w = {k: getattr(cnn.get_submodule(k[0]), k[1]).detach().clone() for k in keys}
    z = project(w)  # Z0 = project(W0), U0 = 0
    u = {k: torch.zeros_like(v) for k, v in w.items()}
    for _ in range(3):
        w = {k: w[k] - lr * rho * (w[k] - z[k] + u[k]) for k in keys}
        z = project({k: w[k] + u[k] for k in keys})
        u = {k: u[k] + w[k] - z[k] for k in keys}
    _, masks = pruner.compress()
    assert [r["iteration"] for r in pruner.history] == [1, 2, 3]
    for k in keys:
        assert torch.allclose(pruner.Z[k], z[k], atol=1e-6), k
        assert torch.allclose(pruner.U[k], u[k], atol=1e-6), k
        # Z has exactly the requested sparsity after every iteration, and the masks are its support.
        n = z[k].numel()
        assert int((pruner.Z[k] != 0).sum()) == n - math.floor(n * 0.8)
        # The final masks hard-prune the trained weights: the support of project(W).
        assert torch.equal(masks[k[0]][k[1]], project(w)[k] != 0)
        assert torch.equal(getattr(cnn.get_submodule(k[0]), k[1]), project(w)[k])
    for record in pruner.history:
        assert all(s == math.floor(_units(t) * 0.8) / _units(t)
                   for t, s in zip(pruner.targets, record["sparsity"].values()))


def test_coarse_grained_projects_whole_output_channels_and_speeds_up(cnn, batch):
    run = Loop(cnn)
    pruner = ADMMPruner(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "rho": 1e-2}], run.evaluator,
                        iterations=2, training_steps=3, granularity="coarse-grained", dummy_input=_dummy())
    _, masks = pruner.compress()
    for k, z in pruner.Z.items():
        rows = z.flatten(1).abs().sum(1) != 0
        assert int(rows.sum()) == z.shape[0] // 2, k
        live = masks[k[0]][k[1]].flatten(1).any(1)  # (conv2's mask also drops conv1's pruned inputs)
        assert int(live.sum()) == z.shape[0] // 2  # whole output channels
    cnn.eval()
    masked = cnn(batch)
    ModelSpeedup(cnn, _dummy(), masks).speedup_model()
    assert cnn.conv1.out_channels == 4 and cnn.conv2.out_channels == 8
    assert torch.allclose(cnn(batch), masked, rtol=1e-4, atol=1e-5)


ADMM_BAD = [
    (dict(iterations=0), ValueError, "The 'iterations' parameter of ADMMPruner must be a positive int"),
    (dict(training_steps=None), ValueError, "give 'training_steps' or 'training_epochs'"),
    (dict(granularity="fine"), ValueError, "'granularity' parameter of ADMMPruner must be 'fine-grained' or "
                                           "'coarse-grained'"),
    (dict(config=[{**CONFIG[0], "rho": -1}]), ValueError, r"config_list\[0\]: 'rho' must be a number > 0"),
    (dict(config=[{**CONFIG[0], "rho": "big"}]), TypeError, r"config_list\[0\]: 'rho' must be a number > 0"),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), ADMM_BAD, ids=range(len(ADMM_BAD)))
def test_bad_admm_arguments_are_refused(kwargs, exc, words, cnn):
    run = Loop(cnn)
    config = kwargs.pop("config", CONFIG)
    with pytest.raises(exc, match=words):
        ADMMPruner(cnn, config, run.evaluator, **{"iterations": 2, "training_steps": 2, **kwargs})
    assert run.calls == 0 and get_masks(cnn) == {}


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_progress_shows_round_sparsity_and_score_on_stderr_when_asked(progress, shown, cnn, capsys):
    LotteryTicketPruner(cnn, CONFIG, Loop(cnn).evaluator, total_iteration=2, training_steps=2,
                        progress=progress).compress()
    torch.manual_seed(0)
    other = type(cnn)()
    ADMMPruner(other, CONFIG, Loop(other).evaluator, iterations=2, training_steps=2, progress=progress).compress()
    err = capsys.readouterr().err
    # None: only on a terminal, and pytest's captured stderr is not one. The sparsity shown is
    # the mean over the layers of floor(n * 0.8) / n.
    assert bool(re.search(r"LotteryTicketPruner round 2/2 \| sparsity 0\.79\d* \| score 0\.5", err)) == shown
    assert bool(re.search(r"ADMMPruner iteration 2/2 \| sparsity 0\.79\d* \| residual 0\.\d+", err)) == shown
    assert (err == "") == (not shown)
