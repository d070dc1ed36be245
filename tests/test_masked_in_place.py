"""MaskedInPlace, how the long-running pruners train a masked model: the kept weights train
exactly as with the masks attached, and the pruned ones stay zero at every step, for every
optimizer (the zeroing after each step is skipped only for those proven to keep zeros)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secateurs.masks import MaskedInPlace, attach_masks, get_masks

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2, weight_decay=1e-3),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
    "adamax": lambda p: torch.optim.Adamax(p, lr=1e-2),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2, decoupled_weight_decay=True, weight_decay=1e-2),
    "radam": lambda p: torch.optim.RAdam(p, lr=1e-2),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "asgd": lambda p: torch.optim.ASGD(p, lr=1e-2),  # not known to keep zeros: zeroed after each step
}


class Noisy(torch.optim.SGD):
    """An optimizer that moves every entry, gradient or not."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _masks(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {"0": {"weight": torch.rand(model[0].weight.shape, generator=g) > 0.5},
            "2": {"weight": torch.rand(model[2].weight.shape, generator=g) > 0.3}}


def _grow(model, seed):
    """AND the attached masks with new random ones (a pruner's next round)."""
    old = get_masks(model)
    new = _masks(model, seed)
    attach_masks(model, {m: {t: old[m][t] & new[m][t] for t in e} for m, e in new.items()})


def _train(model, optimizer, steps, held=None, seen=None):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        if seen is not None:
            seen.append({n: model[i].weight.detach().clone() for i, n in ((0, "0"), (2, "2"))})
        x, y = torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # sees the masked gradients
        optimizer.step()
        if held is not None:
            held.after_step()


@pytest.mark.parametrize("name", [*OPTIMIZERS, "noisy"])
def test_kept_weights_train_exactly_as_with_attached_masks_and_pruned_ones_stay_zero(name):
    make = OPTIMIZERS.get(name, lambda p: Noisy(p, lr=0.05, momentum=0.9))
    attached, held_model = _model(), _model()
    opt_a, opt_h = make(attached.parameters()), make(held_model.parameters())
    for model in (attached, held_model):
        attach_masks(model, _masks(model, 2))
    seen = []
    for round_ in range(2):  # the masks grow between the rounds; momentum of newly pruned entries is live
        _train(attached, opt_a, 4)
        held = MaskedInPlace(held_model, [opt_h])
        assert held.rezero == (name in ("asgd", "noisy"))
        with held:
            assert get_masks(held_model) == {}
            _train(held_model, opt_h, 4, held, seen)
            masks = held.masks
            for snapshot in seen:  # every forward pass computed with the pruned weights at zero
                for module_name, entry in masks.items():
                    assert not snapshot[module_name][~entry["weight"]].any(), (round_, module_name)
        seen.clear()
        for module_name, entry in get_masks(attached).items():
            kept = entry["weight"]
            a = attached.get_submodule(module_name).weight
            h = held_model.get_submodule(module_name).weight
            assert torch.equal(a[kept], h[kept]), (name, round_, module_name)
            assert not h[~kept].any()
        if round_ == 0:
            _grow(attached, 7)
            _grow(held_model, 7)
    assert torch.equal(attached[0].bias, held_model[0].bias)


def test_the_masks_come_back_on_exit_and_update_holds_new_ones():
    model = _model()
    masks = _masks(model, 2)
    attach_masks(model, masks)
    params = [id(p) for p in model.parameters()]
    with MaskedInPlace(model) as held:
        smaller = {m: {t: v & _masks(model, 9)[m][t] for t, v in e.items()} for m, e in masks.items()}
        held.update(smaller)
        assert not model[0].weight[~smaller["0"]["weight"]].any()
    assert [id(p) for p in model.parameters()] == params
    attached = get_masks(model)
    assert all(torch.equal(attached[m]["weight"], smaller[m]["weight"]) for m in smaller)
    with pytest.raises(RuntimeError, match="not active"):
        held.update(smaller)
