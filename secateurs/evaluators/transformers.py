"""TransformersEvaluator: run a Hugging Face ``transformers.Trainer`` for a pruner."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import transformers

from .base import Evaluator, StopTraining, _setattrs



class _StepHooks(transformers.TrainerCallback):
    """Runs the evaluator's step tasks around each optimizer step of the trainer.

    The step budget is spent by raising :class:`StopTraining` from the after-step tasks;
    here it becomes ``control.should_training_stop`` so the trainer finishes the step
    (scheduler step, ``zero_grad``, ``global_step``) and ends training the normal way.
    """

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.evaluator._run_before_step()
        return control

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        try:
            self.evaluator._run_after_step()
        except StopTraining:
            control.should_training_stop = True
        return control


class TransformersEvaluator(Evaluator):
    """Train and evaluate the bound model with the user's ``transformers.Trainer``.

    The trainer keeps its own arguments, data, collator, callbacks and optimizer
    settings. During :meth:`train` (and, for the model swap, :meth:`evaluate`) the
    evaluator patches, and restores in a ``finally`` also when training raises:

    * ``trainer.compute_loss``: wrapped so that the pruners' loss patches apply to the
      training loss (only while the model is in training mode, so evaluation losses
      are never patched). With gradient accumulation each micro-batch loss is patched
      and then scaled by the trainer as usual.
    * a :class:`transformers.TrainerCallback` added to the trainer that runs the
      before-step tasks in ``on_pre_optimizer_step`` (after backward and gradient
      clipping) and the after-step tasks in ``on_optimizer_step``; when the step budget
      is spent it sets ``control.should_training_stop``, so the trainer finishes the
      step and stops cleanly.
    * ``trainer.args.max_steps`` and ``trainer.args.num_train_epochs``: set to the
      requested limits (with both given, the epochs bound the schedule and the step
      budget stops training early).
    * ``trainer.model_init``: cleared, so ``Trainer.train`` cannot replace the bound
      model with a freshly initialised one.
    * ``trainer.optimizer``, ``trainer.lr_scheduler`` and ``trainer.is_in_train`` (and
      the callback handler's ``model``, ``optimizer`` and ``lr_scheduler``): put back
      afterwards, so an optimizer the trainer created for the pruner's run is not
      reused by the user's next ``train()`` (each :meth:`train` call starts with fresh
      optimizer state, as with Lightning); an optimizer the user gave the trainer is
      used and kept.
    * ``trainer.model`` and ``trainer.model_wrapped``: when the bound model is not
      ``trainer.model`` (a pruner's copy), it is swapped in for training and
      evaluation. It must be on the trainer's device, and ``trainer.optimizer``, if
      set, must hold its parameters (else :meth:`train` raises ``ValueError``).

    ``trainer.state`` is left as the last run made it, as after any ``train()`` call.

    Args:
        trainer: a ``transformers.Trainer`` with a ``train_dataset`` (and an
            ``eval_dataset`` for :meth:`evaluate`).
        dummy_input: example inputs for dependency-aware pruning.
        metric: the key of ``trainer.evaluate()``'s result that :meth:`evaluate` returns
            (``"eval_accuracy"``; the ``"eval_"`` prefix may be left out). ``None``
            (default) returns ``-eval_loss``.
        higher_is_better: whether a larger ``metric`` is better; if ``False`` it is
            negated so that :meth:`evaluate`'s result is higher-is-better. Only used
            with ``metric``.

    Raises:
        TypeError: ``trainer`` is not a ``transformers.Trainer`` or ``metric`` is not a
            string.
    """

    def __init__(
        self,
        trainer: transformers.Trainer,
        dummy_input: Any = None,
        metric: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(dummy_input)
        if not isinstance(trainer, transformers.Trainer):
            raise TypeError(
                f"TransformersEvaluator: 'trainer' must be a transformers.Trainer; got {type(trainer).__name__}."
            )
        if metric is not None and not isinstance(metric, str):
            raise TypeError(f"TransformersEvaluator: 'metric' must be a str or None; got {metric!r}.")
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"TransformersEvaluator: 'higher_is_better' must be a bool; got {higher_is_better!r}.")
        self.trainer = trainer
        self.metric = metric
        self.higher_is_better = higher_is_better

    @contextmanager
    def _model_swapped_in(self) -> Iterator[None]:
        trainer = self.trainer
        wrapped = getattr(trainer, "model_wrapped", None)
        # The Trainer trains ``model_wrapped``: it must be the bound model or a wrapper of it
        # (DDP, DeepSpeed); a model assigned to ``trainer.model`` after the Trainer was built
        # leaves the old one there, which would be trained instead without a word.
        if self.model is trainer.model and (wrapped is self.model or getattr(wrapped, "module", None) is self.model):
            yield
            return
        with _setattrs(trainer, {"model": self.model, "model_wrapped": self.model}):
            yield

    def _train(self, max_steps: int | None, max_epochs: int | None) -> None:
        trainer = self.trainer
        user_compute_loss = trainer.compute_loss

        @functools.wraps(user_compute_loss)
        def compute_loss(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            result = user_compute_loss(model, *args, **kwargs)
            if not model.training:
                return result
            if isinstance(result, tuple):
                return (self.patched_loss(result[0]), *result[1:])
            return self.patched_loss(result)

        if max_epochs is None:
            limits = {"max_steps": max_steps}
        else:
            limits = {"max_steps": -1, "num_train_epochs": max_epochs}
        if self.model is not trainer.model and trainer.optimizer is not None:
            owned = {id(p) for p in self.model.parameters()}
            if not all(id(p) in owned for group in trainer.optimizer.param_groups for p in group["params"]):
                raise ValueError(
                    "TransformersEvaluator.train: the bound model is not trainer.model, and trainer.optimizer "
                    "(given to the trainer, or created by an earlier trainer.train()) holds parameters of another "
                    "model; bind trainer.model, or set trainer.optimizer = None so the trainer creates one."
                )
        kept = {name: getattr(trainer, name) for name in ("optimizer", "lr_scheduler", "is_in_train")}
        handler = trainer.callback_handler
        callback = _StepHooks(self)
        trainer.add_callback(callback)
        try:
            with (
                _setattrs(trainer.args, limits),
                _setattrs(trainer, {"compute_loss": compute_loss, "model_init": None}),
                _setattrs(trainer, kept),
                _setattrs(handler, {"optimizer": handler.optimizer, "lr_scheduler": handler.lr_scheduler}),
                _setattrs(handler, {"model": handler.model}),
                self._model_swapped_in(),
            ):
                trainer.train()
        finally:
            trainer.remove_callback(callback)

    def evaluate(self) -> float:
        """Run ``trainer.evaluate()`` on the bound model and return the chosen metric.

        Returns:
            ``-eval_loss`` by default, else the named metric (negated if
            ``higher_is_better`` is ``False``); higher is better.

        Raises:
            RuntimeError: no model is bound.
            KeyError: the named metric is not among the evaluation results.
        """
        if self.model is None:
            raise RuntimeError(
                "TransformersEvaluator.evaluate: no model is bound; use `with evaluator.session(model):`."
            )
        with self._model_swapped_in():
            results = self.trainer.evaluate()
        if self.metric is None:
            key, sign = "eval_loss", -1.0
        else:
            key = self.metric if self.metric in results or self.metric.startswith("eval_") else f"eval_{self.metric}"
            sign = 1.0 if self.higher_is_better else -1.0
        if key not in results:
            close = difflib.get_close_matches(key, list(results), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"TransformersEvaluator.evaluate: metric {key!r} is not in trainer.evaluate()'s results "
                f"{sorted(results)}.{hint}"
            )
        return sign * float(results[key])
