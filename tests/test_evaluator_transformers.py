"""TransformersEvaluator drives a real ``transformers.Trainer`` and leaves it as it found it."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from secateurs.evaluators import TransformersEvaluator


class _Pairs(torch.utils.data.Dataset):
    """Random token sequences; the label is whether token 0 is in the upper half of the vocabulary."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] >= 50).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _accuracy(pred: transformers.EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def _bert() -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2
    )
    return transformers.BertForSequenceClassification(config)


@pytest.fixture
def trainer(tmp_path) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="no",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        optim="sgd",
        learning_rate=0.1,
        max_grad_norm=0.0,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=_bert(),
        args=args,
        train_dataset=_Pairs(16, seed=1),
        eval_dataset=_Pairs(16, seed=2),
        compute_metrics=_accuracy,
    )
    trainer.remove_callback(transformers.PrinterCallback)  # it prints the metrics of every run
    return trainer


def _trainer_snapshot(trainer: transformers.Trainer) -> dict:
    return {
        "max_steps": trainer.args.max_steps,
        "num_train_epochs": trainer.args.num_train_epochs,
        "callbacks": list(trainer.callback_handler.callbacks),
        "model": trainer.model,
        "optimizer": trainer.optimizer,
        "lr_scheduler": trainer.lr_scheduler,
        "model_init": trainer.model_init,
        "is_in_train": trainer.is_in_train,
    }


def test_train_applies_patches_for_exact_steps_then_restores(trainer) -> None:
    model = trainer.model
    before = _trainer_snapshot(trainer)
    ev = TransformersEvaluator(trainer)
    seen: list[float] = []
    grad_is_weight: list[bool] = []
    after: list[int] = []
    weight = model.classifier.weight

    def record(loss: torch.Tensor) -> torch.Tensor:
        seen.append(float(loss.detach()))
        return loss

    with ev.session(model):
        ev.patch_loss(record)
        # Training minimises patch(loss): with this patch the classifier weight's gradient is the weight.
        ev.patch_loss(lambda loss: 0.0 * loss + 0.5 * (weight**2).sum())
        ev.before_optimizer_step(lambda: grad_is_weight.append(torch.allclose(weight.grad, weight.detach())))
        ev.after_optimizer_step(lambda: after.append(1))
        ev.train(max_steps=3)
        score = ev.evaluate()

    assert len(grad_is_weight) == 3 and all(grad_is_weight)
    assert len(after) == 3
    assert len(seen) == 3 and all(loss > 0 for loss in seen)  # evaluation losses are not patched
    assert trainer.state.global_step == 3
    assert ev.steps_run == 3  # what a pruner checks against its training_steps
    assert isinstance(score, float) and score < 0.0  # -eval_loss
    assert _trainer_snapshot(trainer) == before
    assert "compute_loss" not in trainer.__dict__

    trainer.train()  # the user's own run: no pruner code left in it
    assert (len(seen), len(grad_is_weight), len(after)) == (3, 3, 3)


def test_train_by_epochs_runs_every_batch(trainer) -> None:
    ev = TransformersEvaluator(trainer)
    steps: list[int] = []
    with ev.session(trainer.model):
        ev.after_optimizer_step(lambda: steps.append(1))
        ev.train(max_epochs=1)
    assert len(steps) == 4  # 16 examples, batches of 4
    assert (trainer.args.max_steps, trainer.args.num_train_epochs) == (2, 3.0)


def test_exception_during_training_restores_everything(trainer) -> None:
    before = _trainer_snapshot(trainer)
    ev = TransformersEvaluator(trainer)
    calls: list[int] = []

    def fail_on_second_step() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("task failed")

    with pytest.raises(RuntimeError, match="task failed"), ev.session(trainer.model):
        ev.patch_loss(lambda loss: loss + 0.0)
        ev.before_optimizer_step(fail_on_second_step)
        ev.train(max_steps=5)

    assert _trainer_snapshot(trainer) == before
    assert "compute_loss" not in trainer.__dict__
    assert ev.model is None and not ev._loss_patches and not ev._before_step
    trainer.train()
    assert len(calls) == 2


def test_a_bound_copy_is_trained_and_the_trainer_model_is_kept(trainer) -> None:
    original = trainer.model
    original_weight = original.classifier.weight.detach().clone()
    pruned = copy.deepcopy(original)
    ev = TransformersEvaluator(trainer, metric="accuracy")
    with ev.session(pruned):
        ev.train(max_steps=2)
        accuracy = ev.evaluate()
    assert trainer.model is original and trainer.model_wrapped is original
    assert torch.equal(original.classifier.weight, original_weight)
    assert not torch.equal(pruned.classifier.weight, original_weight)
    assert 0.0 <= accuracy <= 1.0


def test_unknown_metric_names_the_available_ones(trainer) -> None:
    ev = TransformersEvaluator(trainer, metric="acuracy")
    with ev.session(trainer.model), pytest.raises(KeyError, match="eval_accuracy"):
        ev.evaluate()


def test_lower_is_better_metric_is_negated(trainer) -> None:
    ev = TransformersEvaluator(trainer, metric="eval_loss", higher_is_better=False)
    default = TransformersEvaluator(trainer)
    with ev.session(trainer.model):
        negated = ev.evaluate()
    with default.session(trainer.model):
        assert default.evaluate() == pytest.approx(negated)


def test_bad_arguments_are_rejected(trainer) -> None:
    with pytest.raises(TypeError, match="transformers.Trainer"):
        TransformersEvaluator(object())
    with pytest.raises(TypeError, match="'metric'"):
        TransformersEvaluator(trainer, metric=3)
    with pytest.raises(RuntimeError, match="no model is bound"):
        TransformersEvaluator(trainer).evaluate()


def test_a_copy_cannot_borrow_an_optimizer_of_another_model(trainer) -> None:
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    before = _trainer_snapshot(trainer)
    ev = TransformersEvaluator(trainer)
    with ev.session(copy.deepcopy(trainer.model)), pytest.raises(ValueError, match="trainer.optimizer"):
        ev.train(max_steps=1)
    assert _trainer_snapshot(trainer) == before


def test_lottery_ticket_rounds_run_through_the_trainer(trainer) -> None:
    """Each round is one more ``Trainer.train`` call; the model ends holding the ticket."""
    from secateurs import LotteryTicketPruner

    model = trainer.model
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ev = TransformersEvaluator(trainer)
    config = [{"op_types": ["Linear"], "op_names_re": [r".*intermediate\.dense"], "sparse_ratio": 0.75}]
    pruner = LotteryTicketPruner(model, config, ev, total_iteration=2, training_steps=2)
    _, masks = pruner.compress()
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    assert [r["sparsity"][name] for r in pruner.history] == [0.5, 0.75]
    assert all(isinstance(r["score"], float) for r in pruner.history)  # -eval_loss of each round
    mask = masks["bert.encoder.layer.0.intermediate.dense"]["weight"]
    assert torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight, init[name] * mask)
    assert torch.equal(model.classifier.weight, init["classifier.weight"])


def test_a_trainer_run_that_crashed_resumes_to_the_same_result(trainer, tmp_path) -> None:
    """A crash inside round 2 of a LotteryTicket run through the HF Trainer; the same run
    started again with the same checkpoint_dir ends exactly like one that never crashed."""
    from secateurs import LotteryTicketPruner

    config = [{"op_types": ["Linear"], "op_names_re": [r".*intermediate\.dense"], "sparse_ratio": 0.75}]

    def run(folder, crash_at=None):
        model = _bert()
        trainer.model = model  # a new model for an existing Trainer
        count = [0]

        def crash(module, args):
            if module.training:
                count[0] += 1
                if count[0] == crash_at:
                    raise RuntimeError("the machine went down")

        handle = model.register_forward_pre_hook(crash)
        pruner = LotteryTicketPruner(model, config, TransformersEvaluator(trainer), total_iteration=3,
                                     training_steps=2, checkpoint_dir=folder)
        try:
            pruner.compress()
        finally:
            handle.remove()
        return model, pruner, count[0]

    whole, whole_pruner, steps = run(tmp_path / "whole")
    assert steps == 6  # the model assigned to trainer.model is the one trained, not the Trainer's first
    with pytest.raises(RuntimeError, match="the machine went down"):
        run(tmp_path / "crashed", crash_at=4)  # round 2's second step
    resumed, pruner, steps = run(tmp_path / "crashed")
    assert steps == 4  # rounds 2 and 3 only
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [(r["sparsity"], r["score"]) for r in pruner.history] == \
        [(r["sparsity"], r["score"]) for r in whole_pruner.history]
