"""LightningEvaluator: run a Lightning ``Trainer`` and ``LightningDataModule`` for a pruner.

Lightning itself is imported by the user; this module looks it up from the trainer it
is given, so both ``lightning.pytorch`` and the standalone ``pytorch_lightning`` work.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch

from .base import Evaluator, StopTraining, _setattrs

_FRAMEWORKS = ("lightning.pytorch", "pytorch_lightning")


def _framework_of(trainer: Any) -> ModuleType | None:
    """The Lightning package whose ``Trainer`` class ``trainer`` is an instance of."""
    for name in _FRAMEWORKS:
        module = sys.modules.get(name)
        if module is not None and isinstance(trainer, module.Trainer):
            return module
    return None


@contextmanager
def _callback_added(trainer: Any, callback: Any) -> Iterator[None]:
    """Append ``callback`` to ``trainer.callbacks`` and put the user's list back afterwards.

    ``fit`` replaces ``trainer.callbacks`` by a new list (it adds the model's
    ``configure_callbacks``), so the original list object and its items are restored.
    """
    callbacks = trainer.callbacks
    items = list(callbacks)
    callbacks.append(callback)
    try:
        yield
    finally:
        callbacks[:] = items
        trainer.callbacks = callbacks


@contextmanager
def _device_kept(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` back on its device after the block.

    Lightning's teardown at the end of every ``fit`` and ``validate`` moves the module
    to the CPU; a pruner's masks and statistics live where the model was.
    """
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    try:
        yield
    finally:
        if len(devices) == 1:
            (device,) = devices
            if any(t.device != device for t in [*model.parameters(), *model.buffers()]):
                model.to(device)


def _step_hooks(framework: ModuleType, evaluator: Evaluator) -> Any:
    """A callback that runs ``evaluator``'s step tasks around steps of the first optimizer.

    Before-step tasks run in ``on_before_optimizer_step`` (after backward, before
    gradient clipping). After-step tasks run from a post-step hook registered on the
    trainer's first optimizer in ``on_train_start``, once the optimizers exist (a torch
    pre-step hook would fire before Lightning's closure has computed the gradients).
    When the step budget is spent the hook sets ``trainer.should_stop`` instead of
    letting :class:`StopTraining` escape, so Lightning ends the batch and the fit
    normally and its loop counters stay consistent.
    """

    class StepHooks(framework.Callback):
        def __init__(self) -> None:
            self.optimizer: torch.optim.Optimizer | None = None
            self.handles: list[Any] = []

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.optimizers:
                raise ValueError(
                    "LightningEvaluator.train: the trainer has no optimizer; "
                    "configure_optimizers must return at least one."
                )
            self.optimizer = trainer.optimizers[0]

            def after_step(*_: Any) -> None:
                try:
                    evaluator._run_after_step()
                except StopTraining:
                    trainer.should_stop = True

            self.handles.append(self.optimizer.register_step_post_hook(after_step))

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if optimizer is self.optimizer or getattr(optimizer, "_optimizer", None) is self.optimizer:
                evaluator._run_before_step()

        def remove_hooks(self) -> None:
            for handle in self.handles:
                handle.remove()
            self.handles.clear()

    return StepHooks()


class LightningEvaluator(Evaluator):
    """Train and evaluate the bound ``LightningModule`` with the user's Lightning trainer.

    The user's trainer itself is reused for every :meth:`train` call, so all its
    settings (accelerator, strategy, precision, callbacks, gradient clipping and
    accumulation, validation schedule, ``limit_*_batches``, ``max_time``) apply; only
    its limits are changed for the call. Its progress counters (``global_step``,
    ``current_epoch``) advance as with any ``fit``, and the optimizers and schedulers
    are those the module's ``configure_optimizers`` returns for each ``fit``. During
    :meth:`train` (and, for the device, :meth:`evaluate`) the evaluator patches, and
    restores in a ``finally`` also when training raises:

    * ``model.training_step``: wrapped so that the pruners' loss patches apply to what
      it returns (a tensor, or the ``"loss"`` of a dict). Loss patches need automatic
      optimization.
    * ``trainer.callbacks``: a callback is added that runs the before-step tasks in
      ``on_before_optimizer_step`` and registers a post-step hook on the trainer's
      first optimizer for the after-step tasks (removed afterwards); a step is one step
      of that optimizer. When the step budget is spent it sets ``trainer.should_stop``.
    * ``trainer.fit_loop.max_epochs``, ``trainer.fit_loop.min_epochs``,
      ``trainer.fit_loop.epoch_loop.max_steps`` and ``...epoch_loop.min_steps``: set so
      that ``fit`` runs the requested number of steps or epochs counted from the
      trainer's current progress, with no minimum that would outlast them.
    * the model's device: Lightning moves the module to the CPU when ``fit`` and
      ``validate`` end; :meth:`train` and :meth:`evaluate` move it back to the one
      device it was on.

    Args:
        trainer: a ``lightning.Trainer`` (or ``pytorch_lightning.Trainer``).
        data_module: the ``LightningDataModule`` that ``fit`` and ``validate`` use.
        dummy_input: example inputs for dependency-aware pruning.
        metric: the name of the metric, logged during validation, that
            :meth:`evaluate` returns (``"val_acc"``). ``None`` (default) takes the first
            metric logged.
        higher_is_better: whether a larger metric is better; if ``False`` it is negated
            so that :meth:`evaluate`'s result is higher-is-better. Mind it with the
            default ``metric=None`` when the first logged metric is a loss.

    Raises:
        TypeError: ``trainer`` is not a Lightning ``Trainer``, ``data_module`` is not a
            ``LightningDataModule`` of the same package, or ``metric`` is not a string.
    """

    def __init__(
        self,
        trainer: Any,
        data_module: Any,
        dummy_input: Any = None,
        metric: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(dummy_input)
        framework = _framework_of(trainer)
        if framework is None:
            raise TypeError(
                "LightningEvaluator: 'trainer' must be a lightning.Trainer or pytorch_lightning.Trainer; "
                f"got {type(trainer).__name__}."
            )
        if not isinstance(data_module, framework.LightningDataModule):
            raise TypeError(
                f"LightningEvaluator: 'data_module' must be a {framework.__name__}.LightningDataModule; "
                f"got {type(data_module).__name__}."
            )
        if metric is not None and not isinstance(metric, str):
            raise TypeError(f"LightningEvaluator: 'metric' must be a str or None; got {metric!r}.")
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"LightningEvaluator: 'higher_is_better' must be a bool; got {higher_is_better!r}.")
        self.trainer = trainer
        self.data_module = data_module
        self.metric = metric
        self.higher_is_better = higher_is_better
        self._framework = framework

    def _check_model(self, where: str) -> Any:
        model = self.model
        if model is None:
            raise RuntimeError(f"LightningEvaluator.{where}: no model is bound; use `with evaluator.session(model):`.")
        if not isinstance(model, self._framework.LightningModule):
            raise TypeError(
                f"LightningEvaluator.{where}: the bound model must be a {self._framework.__name__}.LightningModule; "
                f"got {type(model).__name__}."
            )
        return model

    def _train(self, max_steps: int | None, max_epochs: int | None) -> None:
        model = self._check_model("train")
        if self._loss_patches and not model.automatic_optimization:
            raise ValueError(
                "LightningEvaluator.train: a pruner patches the loss, which needs automatic optimization; "
                f"{type(model).__name__}.automatic_optimization is False."
            )
        user_step = model.training_step

        @functools.wraps(user_step)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            output = user_step(*args, **kwargs)
            if not self._loss_patches or output is None:
                return output
            if isinstance(output, torch.Tensor):
                return self.patched_loss(output)
            if isinstance(output, Mapping) and "loss" in output:
                return {**output, "loss": self.patched_loss(output["loss"])}
            raise TypeError(
                "LightningEvaluator.train: training_step must return a loss tensor or a dict with a 'loss' "
                f"for the loss patches to apply; got {type(output).__name__}."
            )

        trainer = self.trainer
        loop = trainer.fit_loop
        steps_limit = -1 if max_steps is None else trainer.global_step + max_steps
        epochs_limit = -1 if max_epochs is None else loop.epoch_progress.current.processed + max_epochs
        callback = _step_hooks(self._framework, self)
        try:
            with (
                _setattrs(loop, {"max_epochs": epochs_limit, "min_epochs": None}),
                _setattrs(loop.epoch_loop, {"max_steps": steps_limit, "min_steps": None}),
                _setattrs(model, {"training_step": training_step}),
                _callback_added(trainer, callback),
                _device_kept(model),
            ):
                trainer.fit(model, datamodule=self.data_module)
        finally:
            callback.remove_hooks()

    def evaluate(self) -> float:
        """Run ``trainer.validate`` on the bound model and return the chosen metric.

        Returns:
            The named metric, or the first one logged, negated if
            ``higher_is_better`` is ``False``; higher is better.

        Raises:
            RuntimeError: no model is bound, or validation logged no metric.
            KeyError: the named metric was not logged.
        """
        model = self._check_model("evaluate")
        with _device_kept(model):
            results = self.trainer.validate(model, datamodule=self.data_module, verbose=False)
        metrics: dict[str, float] = {}
        for per_loader in results:
            for name, value in per_loader.items():
                metrics.setdefault(name, float(value))
        if not metrics:
            raise RuntimeError(
                "LightningEvaluator.evaluate: validation logged no metric; call self.log('val_acc', ...) in "
                f"{type(model).__name__}.validation_step (or give the data module a val_dataloader)."
            )
        name = next(iter(metrics)) if self.metric is None else self.metric
        if name not in metrics:
            close = difflib.get_close_matches(name, list(metrics), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"LightningEvaluator.evaluate: metric {name!r} was not logged; logged: {sorted(metrics)}.{hint}"
            )
        return metrics[name] if self.higher_is_better else -metrics[name]
