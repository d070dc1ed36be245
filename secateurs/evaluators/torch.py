"""TorchEvaluator: drive a plain PyTorch training loop (NNI's signature, no tracing)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..checkpoint import load_optimizer_state, optimizer_state
from .base import Evaluator


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class TorchEvaluator(Evaluator):
    """Run the user's own training loop for a pruner.

    Args:
        training_func: ``training_func(model, optimizers, training_step, lr_schedulers,
            max_steps, max_epochs)``, the user's loop. It must get the loss from the
            ``training_step`` it is given (``loss = training_step(batch, model)``) and call
            ``optimizer.step()``; it should stop after ``max_steps`` optimizer steps or
            ``max_epochs`` epochs (the evaluator also stops it after ``max_steps``).
        optimizers: a plain ``torch.optim.Optimizer`` (or a list) over the model's
            parameters; no tracing wrapper is needed.
        training_step: ``training_step(batch, model, *args, **kwargs) -> loss``.
        lr_schedulers: passed through to ``training_func``.
        dummy_input: example inputs for dependency-aware pruning.
        evaluating_func: ``evaluating_func(model) -> float`` (higher is better).

    Example:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> model = nn.Linear(4, 2)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
        >>> def step(batch, model):
        ...     return F.cross_entropy(model(batch[0]), batch[1])
        >>> def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        ...     for batch in data * 10:
        ...         optimizers.zero_grad()
        ...         training_step(batch, model).backward()
        ...         optimizers.step()
        >>> ev = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1), step)
        >>> steps = []
        >>> with ev.session(model):
        ...     ev.after_optimizer_step(lambda: steps.append(1))
        ...     ev.train(max_steps=5)
        >>> len(steps)
        5
    """

    def __init__(
        self,
        training_func: Callable,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        training_step: Callable,
        lr_schedulers: Any = None,
        dummy_input: Any = None,
        evaluating_func: Callable | None = None,
    ) -> None:
        super().__init__(dummy_input)
        if not callable(training_func):
            raise TypeError(f"TorchEvaluator: 'training_func' must be callable; got {type(training_func).__name__}.")
        if not callable(training_step):
            raise TypeError(f"TorchEvaluator: 'training_step' must be callable; got {type(training_step).__name__}.")
        opts = _as_list(optimizers)
        if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
            raise TypeError(
                f"TorchEvaluator: 'optimizers' must be a torch.optim.Optimizer or a list of them; got {optimizers!r}."
            )
        if evaluating_func is not None and not callable(evaluating_func):
            raise TypeError("TorchEvaluator: 'evaluating_func' must be callable or None.")
        self.training_func = training_func
        self.optimizers = optimizers
        self.training_step = training_step
        self.lr_schedulers = lr_schedulers
        self.evaluating_func = evaluating_func

    def _train(self, max_steps: int | None, max_epochs: int | None) -> None:
        user_step = self.training_step

        def step(*args: Any, **kwargs: Any) -> torch.Tensor:
            return self.patched_loss(user_step(*args, **kwargs))

        handles = self._hook_optimizer(_as_list(self.optimizers)[0])
        try:
            self.training_func(self.model, self.optimizers, step, self.lr_schedulers, max_steps, max_epochs)
        finally:
            for h in handles:
                h.remove()

    def training_state(self) -> tuple[dict[str, torch.Tensor], Any]:
        """The optimizers' and LR schedulers' state dicts, split into tensors and JSON.

        Raises:
            TypeError: a scheduler's state holds a value that is neither a tensor nor JSON
                (it could not be checkpointed without pickle).
        """
        tensors: dict[str, torch.Tensor] = {}
        optims = []
        for i, opt in enumerate(_as_list(self.optimizers)):
            t, meta = optimizer_state(opt, f"optim/{i}/")
            tensors.update(t)
            optims.append(meta)
        scheds = []
        for i, sched in enumerate(_as_list(self.lr_schedulers)):
            values = {}
            for key, value in sched.state_dict().items():
                if isinstance(value, torch.Tensor):
                    tensors[f"sched/{i}/{key}"] = value
                    continue
                try:
                    values[key] = json.loads(json.dumps(value))
                except (TypeError, ValueError):
                    raise TypeError(f"TorchEvaluator: lr_schedulers[{i}] ({type(sched).__name__}) holds {key!r} = "
                                    f"{type(value).__name__}, which cannot be checkpointed without pickle.") from None
            scheds.append(values)
        return tensors, {"optimizers": optims, "schedulers": scheds}

    def load_training_state(self, tensors: dict[str, torch.Tensor], meta: Any) -> None:
        opts, scheds = _as_list(self.optimizers), _as_list(self.lr_schedulers)
        if meta is None or len(meta["optimizers"]) != len(opts) or len(meta["schedulers"]) != len(scheds):
            raise ValueError("TorchEvaluator.load_training_state: the state is of another number of optimizers "
                             "or LR schedulers.")
        for i, opt in enumerate(opts):
            load_optimizer_state(opt, tensors, meta["optimizers"][i], f"optim/{i}/")
        for i, sched in enumerate(scheds):
            state = dict(meta["schedulers"][i])
            prefix = f"sched/{i}/"
            state.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            sched.load_state_dict(state)

    def training_optimizers(self) -> list[torch.optim.Optimizer]:
        return _as_list(self.optimizers)

    def can_evaluate(self) -> bool:
        return self.evaluating_func is not None

    def evaluate(self) -> float:
        if self.evaluating_func is None:
            raise ValueError("TorchEvaluator.evaluate: no 'evaluating_func' was given.")
        if self.model is None:
            raise RuntimeError("TorchEvaluator.evaluate: no model is bound; use `with evaluator.session(model):`.")
        return float(self.evaluating_func(self.model))
