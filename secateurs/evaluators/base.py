"""The Evaluator protocol: what a pruner may do inside the user's own training.

A pruner never owns the training loop. Through an evaluator it can

* add a term to the loss (:meth:`Evaluator.patch_loss`),
* run code just before and just after every optimizer step
  (:meth:`Evaluator.before_optimizer_step`, :meth:`Evaluator.after_optimizer_step`),
* register forward, backward and tensor hooks (:meth:`Evaluator.hook_forward`,
  :meth:`Evaluator.hook_backward`, :meth:`Evaluator.hook_tensor`),
* train for a number of optimizer steps or epochs (:meth:`Evaluator.train`),
* evaluate (:meth:`Evaluator.evaluate`, higher is better).

Everything a pruner patches is undone by :meth:`Evaluator.restore`, which
:meth:`Evaluator.session` calls on the way out, also when training raises.
Adapters (plain PyTorch, Lightning, Hugging Face Trainer) implement ``_train`` and
``evaluate`` and apply the loss patches and step hooks in their framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn


_UNSET = object()


@contextmanager
def _setattrs(obj: Any, values: dict[str, Any]) -> Iterator[None]:
    """Set attributes of ``obj`` for the duration of the block, then put the old ones back.

    An attribute that was an instance attribute gets its old value back; one that was
    not (a method looked up on the class) is deleted again.
    """
    saved = {name: obj.__dict__.get(name, _UNSET) for name in values}
    try:
        for name, value in values.items():
            setattr(obj, name, value)
        yield
    finally:
        for name, old in saved.items():
            if old is _UNSET:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, old)


class StopTraining(Exception):
    """Raised from an optimizer step hook once the requested number of steps is done."""


class Evaluator:
    """Base class of the adapters; see the module docstring for the protocol.

    Args:
        dummy_input: example inputs for dependency-aware pruning, used by pruners that
            are not given their own ``dummy_input``.

    Attributes:
        steps_run: optimizer steps the last :meth:`train` call ran (a pruner checks that
            the user's loop did not stop before the steps it asked for).
    """

    def __init__(self, dummy_input: Any = None) -> None:
        self.dummy_input = dummy_input
        self.model: nn.Module | None = None
        self._loss_patches: list[Callable[[torch.Tensor], torch.Tensor]] = []
        self._before_step: list[Callable[[], None]] = []
        self._after_step: list[Callable[[], None]] = []
        self._handles: list[Any] = []
        self._steps_left: int | None = None
        self.steps_run = 0

    # -- what pruners call ---------------------------------------------------------------
    @contextmanager
    def session(self, model: nn.Module) -> Iterator[Evaluator]:
        """Bind ``model`` for a pruner's use; every patch is removed on exit."""
        self.model = model
        try:
            yield self
        finally:
            self.restore()

    def patch_loss(self, patch: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Training will minimise ``patch(loss)`` instead of ``loss``."""
        self._loss_patches.append(patch)

    def before_optimizer_step(self, task: Callable[[], None]) -> None:
        """Run ``task()`` after backward, just before each optimizer step."""
        self._before_step.append(task)

    def after_optimizer_step(self, task: Callable[[], None]) -> None:
        """Run ``task()`` just after each optimizer step."""
        self._after_step.append(task)

    def hook_forward(self, module: nn.Module, hook: Callable) -> None:
        """``module.register_forward_hook(hook)``, removed by :meth:`restore`."""
        self._handles.append(module.register_forward_hook(hook))

    def hook_backward(self, module: nn.Module, hook: Callable) -> None:
        """``module.register_full_backward_hook(hook)``, removed by :meth:`restore`."""
        self._handles.append(module.register_full_backward_hook(hook))

    def hook_tensor(self, tensor: torch.Tensor, hook: Callable) -> None:
        """``tensor.register_hook(hook)``, removed by :meth:`restore`."""
        self._handles.append(tensor.register_hook(hook))

    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> None:
        """Train the bound model for ``max_steps`` optimizer steps (or ``max_epochs``).

        Raises:
            ValueError: neither or a non-positive limit is given.
            RuntimeError: no model is bound (call inside :meth:`session`).
        """
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}.train: no model is bound; use `with evaluator.session(model):`.")
        for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{type(self).__name__}.train: {name!r} must be a positive int; got {value!r}.")
        if max_steps is None and max_epochs is None:
            raise ValueError(f"{type(self).__name__}.train: give 'max_steps' or 'max_epochs'.")
        self._steps_left = max_steps
        self.steps_run = 0
        try:
            self._train(max_steps, max_epochs)
        except StopTraining:
            pass
        finally:
            self._steps_left = None

    def evaluate(self) -> float:
        """Score the bound model; higher is better."""
        raise NotImplementedError

    def can_evaluate(self) -> bool:
        """Whether :meth:`evaluate` has what it needs (pruners that record a score per
        round skip the score when it has not)."""
        return type(self).evaluate is not Evaluator.evaluate

    def restore(self) -> None:
        """Remove every hook and patch a pruner installed."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._loss_patches.clear()
        self._before_step.clear()
        self._after_step.clear()
        self.model = None

    def training_state(self) -> tuple[dict[str, torch.Tensor], Any]:
        """The training state that lives across :meth:`train` calls (optimizer moments, LR
        schedules), as tensors and a JSON value, for checkpoints and for resetting it.

        The base adapters build their optimizers inside each :meth:`train` call (Lightning,
        Hugging Face Trainer), so there is nothing to keep: ``({}, None)``.
        """
        return {}, None

    def load_training_state(self, tensors: dict[str, torch.Tensor], meta: Any) -> None:
        """Restore what :meth:`training_state` returned."""

    def training_optimizers(self) -> list[torch.optim.Optimizer] | None:
        """Every optimizer that trains the model across :meth:`train` calls, when the
        adapter knows them (None: built inside the framework's own training)."""
        return None

    # -- what adapters use ---------------------------------------------------------------
    def _train(self, max_steps: int | None, max_epochs: int | None) -> None:
        raise NotImplementedError

    def patched_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Apply the pruners' loss patches to the loss the user's code computed."""
        for patch in self._loss_patches:
            loss = patch(loss)
        return loss

    def _run_before_step(self) -> None:
        for task in self._before_step:
            task()

    def _run_after_step(self) -> None:
        for task in self._after_step:
            task()
        self.steps_run += 1
        if self._steps_left is not None:
            self._steps_left -= 1
            if self._steps_left <= 0:
                raise StopTraining

    def _hook_optimizer(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        """Register the step hooks on a plain torch optimizer (with several optimizers, the
        first one: a step is one step of it); returns the handles to remove."""
        return [
            optimizer.register_step_pre_hook(lambda *_: self._run_before_step()),
            optimizer.register_step_post_hook(lambda *_: self._run_after_step()),
        ]
