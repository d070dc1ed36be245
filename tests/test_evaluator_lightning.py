"""LightningEvaluator drives a real Lightning ``Trainer`` and leaves it as it found it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

L = pytest.importorskip("lightning")

from secateurs.evaluators import LightningEvaluator

# Lightning 2.6 still builds pytree LeafSpecs, which current torch deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")


class TinyClassifier(L.LightningModule):
    def __init__(self, dict_output: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.dict_output = dict_output

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> object:
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        return {"loss": loss} if self.dict_output else loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits = self.net(batch[0])
        self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean())
        self.log("val_loss", F.cross_entropy(logits, batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RandomData(L.LightningDataModule):
    """64 random points; the label is the sign of the first coordinate."""

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        self.dataset = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.dataset, batch_size=8)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.dataset, batch_size=32)


def _trainer(**kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _snapshot(trainer: L.Trainer, model: L.LightningModule) -> dict:
    loop = trainer.fit_loop
    return {
        "callbacks": trainer.callbacks,
        "callback_items": list(trainer.callbacks),
        "limits": (loop.max_epochs, loop.min_epochs, loop.epoch_loop.max_steps, loop.epoch_loop.min_steps),
        "training_step_patched": "training_step" in model.__dict__,
    }


@pytest.mark.parametrize("dict_output", [False, True])
def test_train_applies_patches_for_exact_steps_then_restores(dict_output: bool) -> None:
    trainer, data, model = _trainer(max_epochs=1, min_epochs=1), RandomData(), TinyClassifier(dict_output)
    before = _snapshot(trainer, model)
    ev = LightningEvaluator(trainer, data, metric="val_acc")
    seen: list[float] = []
    grad_is_weight: list[bool] = []
    after: list[int] = []
    weight = model.net[2].weight

    def record(loss: torch.Tensor) -> torch.Tensor:
        seen.append(float(loss.detach()))
        return loss

    with ev.session(model):
        ev.patch_loss(record)
        # Training minimises patch(loss): with this patch the last layer's gradient is its weight.
        ev.patch_loss(lambda loss: 0.0 * loss + 0.5 * (weight**2).sum())
        ev.before_optimizer_step(lambda: grad_is_weight.append(torch.allclose(weight.grad, weight.detach())))
        ev.after_optimizer_step(lambda: after.append(1))
        ev.train(max_steps=3)
        accuracy = ev.evaluate()

    assert len(grad_is_weight) == 3 and all(grad_is_weight)
    assert len(after) == 3
    assert len(seen) == 3 and all(loss > 0 for loss in seen)
    assert trainer.global_step == 3
    assert ev.steps_run == 3  # what a pruner checks against its training_steps
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    assert _snapshot(trainer, model) == before
    assert trainer.callbacks is before["callbacks"]

    trainer.fit(model, datamodule=data)  # the user's own run: no pruner code left in it
    assert (len(seen), len(grad_is_weight), len(after)) == (3, 3, 3)


def test_train_by_epochs_counts_from_the_trainers_progress() -> None:
    trainer, data, model = _trainer(max_epochs=1), RandomData(), TinyClassifier()
    ev = LightningEvaluator(trainer, data)
    steps: list[int] = []
    with ev.session(model):
        ev.after_optimizer_step(lambda: steps.append(1))
        ev.train(max_steps=2)
        ev.train(max_epochs=1)
        ev.train(max_epochs=1)
    assert len(steps) == 2 + 8 + 8  # 64 samples, batches of 8
    assert trainer.fit_loop.max_epochs == 1


def test_exception_during_training_restores_everything() -> None:
    trainer, data, model = _trainer(max_epochs=1), RandomData(), TinyClassifier()
    before = _snapshot(trainer, model)
    ev = LightningEvaluator(trainer, data)
    calls: list[int] = []

    def fail_on_second_step() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("task failed")

    with pytest.raises(RuntimeError, match="task failed"), ev.session(model):
        ev.patch_loss(lambda loss: loss + 0.0)
        ev.after_optimizer_step(fail_on_second_step)
        ev.train(max_steps=5)

    assert _snapshot(trainer, model) == before
    assert ev.model is None and not ev._loss_patches and not ev._after_step
    optimizer_hooks: list[int] = []
    model.configure_optimizers = lambda: _counting_sgd(model, optimizer_hooks)
    trainer.fit(model, datamodule=data)  # the trainer still fits after the interrupted run
    assert len(calls) == 2 and len(optimizer_hooks) == 8


def _counting_sgd(model: L.LightningModule, steps: list[int]) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    return optimizer


def test_evaluate_picks_the_first_or_named_metric() -> None:
    trainer, data, model = _trainer(max_epochs=1), RandomData(), TinyClassifier()
    first = LightningEvaluator(trainer, data)
    loss = LightningEvaluator(trainer, data, metric="val_loss", higher_is_better=False)
    typo = LightningEvaluator(trainer, data, metric="val_accuracy")
    with first.session(model):
        accuracy = first.evaluate()
    with loss.session(model):
        negated_loss = loss.evaluate()
    assert 0.0 <= accuracy <= 1.0 and negated_loss < 0.0
    with typo.session(model), pytest.raises(KeyError, match="val_acc"):
        typo.evaluate()


def test_evaluate_without_logged_metrics_raises() -> None:
    class Silent(TinyClassifier):
        def validation_step(self, batch: object, batch_idx: int) -> None:
            return None

    ev = LightningEvaluator(_trainer(max_epochs=1), RandomData())
    with ev.session(Silent()), pytest.raises(RuntimeError, match="logged no metric"):
        ev.evaluate()


def test_bad_arguments_are_rejected() -> None:
    trainer, data = _trainer(), RandomData()
    with pytest.raises(TypeError, match="'trainer'"):
        LightningEvaluator(object(), data)
    with pytest.raises(TypeError, match="'data_module'"):
        LightningEvaluator(trainer, object())
    ev = LightningEvaluator(trainer, data)
    with ev.session(nn.Linear(2, 2)), pytest.raises(TypeError, match="LightningModule"):
        ev.train(max_steps=1)


def test_the_standalone_pytorch_lightning_package_works_too() -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Linear(4, 2)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> torch.utils.data.DataLoader:
            x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)

    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    ev = LightningEvaluator(trainer, Data())
    losses: list[torch.Tensor] = []
    steps: list[int] = []
    with ev.session(Module()):
        ev.patch_loss(lambda loss: losses.append(loss) or loss)
        ev.after_optimizer_step(lambda: steps.append(1))
        ev.train(max_steps=2)
    assert (len(losses), len(steps)) == (2, 2)
    with pytest.raises(TypeError, match="pytorch_lightning.LightningDataModule"):
        LightningEvaluator(trainer, RandomData())


def test_long_running_pruners_train_their_rounds_through_lightning() -> None:
    """Each round is one more ``train`` call on the same Trainer; the pruned weights stay
    zero while Lightning's own optimizer trains (it is not one secateurs knows, so they are
    zeroed after every step), and LT's ticket is the initial weights, masked."""
    from secateurs import AGPPruner, ADMMPruner, LevelPruner, LotteryTicketPruner
    from secateurs.masks import get_masks

    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5}]
    model = TinyClassifier()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ev = LightningEvaluator(_trainer(max_epochs=50), RandomData(), metric="val_acc")
    pruner = LotteryTicketPruner(model, config, ev, total_iteration=2, training_steps=3)
    _, masks = pruner.compress()
    assert [r["sparsity"]["net.0.weight"] for r in pruner.history] == [0.28125, 0.5]
    assert all(isinstance(r["score"], float) for r in pruner.history)
    for name, value in init.items():
        head, attr = name.rsplit(".", 1)
        mask = masks.get(head, {}).get(attr)
        live = getattr(model.get_submodule(head), attr)
        assert torch.equal(live, value if mask is None else value * mask), name

    model = TinyClassifier()
    ev = LightningEvaluator(_trainer(max_epochs=50), RandomData())
    zeros = []  # per training step: masks attached? and the zeros of net.0.weight its forward uses
    original = model.training_step

    def training_step(batch, batch_idx):
        zeros.append((get_masks(model) != {}, int((model.net[0].weight == 0).sum())))
        return original(batch, batch_idx)

    model.training_step = training_step
    agp = AGPPruner(LevelPruner(model, config), 2, 2, ev)
    _, masks = agp.compress(max_steps=6)
    del model.training_step
    # Rounds after steps 2 and 4 (floor(32 * 0.4375) = 14, then 16 of 32), then 2 steps of fine-tuning;
    # the masks are held in place during training, never attached.
    assert zeros == [(False, 0), (False, 0), (False, 14), (False, 14), (False, 16), (False, 16)]
    assert int((~masks["net.0"]["weight"]).sum()) == 16

    model = TinyClassifier()
    ev = LightningEvaluator(_trainer(max_epochs=50), RandomData())
    admm = ADMMPruner(model, [{**config[0], "rho": 1e-2}], ev, iterations=2, training_steps=3)
    _, masks = admm.compress()
    assert int((admm.Z[("net.0", "weight")] != 0).sum()) == 16
    kept, stored = masks["net.0"]["weight"], model.net[0].parametrizations.weight.original
    assert int(kept.sum()) == 16 and stored[kept].abs().min() >= stored[~kept].abs().max()  # the largest |W|


def test_a_lightning_run_that_crashed_resumes_to_the_same_result(tmp_path) -> None:
    """A crash inside round 2 of a LotteryTicket run under Lightning; the same script run
    again with the same checkpoint_dir ends exactly like a run that never crashed."""
    from secateurs import LotteryTicketPruner

    def run(folder, crash_at=None):
        model = TinyClassifier()
        count = [0]
        original = model.training_step

        def training_step(batch, batch_idx):
            count[0] += 1
            if count[0] == crash_at:
                raise RuntimeError("the machine went down")
            return original(batch, batch_idx)

        model.training_step = training_step
        ev = LightningEvaluator(_trainer(max_epochs=50), RandomData(), metric="val_acc")
        pruner = LotteryTicketPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.75}], ev,
                                     total_iteration=3, training_steps=3, checkpoint_dir=folder)
        try:
            pruner.compress()
        finally:
            del model.training_step
        return model, pruner, count[0]

    whole, whole_pruner, _ = run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="the machine went down"):
        run(tmp_path / "crashed", crash_at=5)  # round 2's second step
    resumed, pruner, steps = run(tmp_path / "crashed")
    assert steps == 6  # rounds 2 and 3 only
    assert list(resumed.state_dict()) == list(whole.state_dict())
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [(r["sparsity"], r["score"]) for r in pruner.history] == \
        [(r["sparsity"], r["score"]) for r in whole_pruner.history]
