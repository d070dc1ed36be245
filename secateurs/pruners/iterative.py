"""Scheduled pruners: LinearPruner and AGPPruner re-prune with a wrapped pruner during training.

Every ``interval_steps`` optimizer steps of the user's own training (through an
:class:`~secateurs.evaluators.Evaluator`), round ``k = 1 .. total_times`` sets each config's
ratio to ``schedule(k, total_times, final)`` (``final`` being the config's own
``sparse_ratio``) and lets the wrapped pruner compute masks on the current masked weights.
The masks are AND-ed with the previous ones (see :meth:`Pruner.calculate_masks`), so the
masks only grow; training then goes on to the end of the budget (fine-tuning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from .._progress import Progress
from .._registry import PRUNERS
from ..evaluators.base import Evaluator
from ..layers import LAYERS
from ..masks import Masks
from ..schedules import agp, linear
from ..sparsity import to_units
from ..targets import get_module
from .base import Pruner
from .data import DataPruner, all_reduce_sum
from .dependency import plan_dependencies


class _ScheduledPruner:
    """Shared machinery; subclasses set ``schedule``.

    Args:
        pruner: a pruner already built with its config_list (LevelPruner, L1NormPruner,
            L2NormPruner, FPGMPruner, or a data-driven one). Its model is the one pruned.
        interval_steps: optimizer steps between two pruning rounds.
        total_times: the number of rounds.
        evaluator: runs the training; ``None`` means the wrapped pruner's own evaluator.
        progress: show one line on stderr per round (round i of n, step, mean realised
            sparsity); None (default) shows it only when stderr is a terminal.

    Attributes:
        history: one dict per round: ``"round"``, ``"step"`` (optimizer steps run when it
            pruned), ``"sparse_ratio"`` (config index -> the ratio asked for) and
            ``"sparsity"`` (``"module.target"`` -> fraction of its units pruned).
    """

    schedule: Callable[[int, int, float], float]
    # Registry metadata: built around another pruner (not from a model and config_list);
    # the granularity and op types are the wrapped pruner's.
    wraps = True
    default_granularity = "out_channel"
    default_op_types = ("Conv1d", "Conv2d", "Conv3d", "Linear")

    def __init__(self, pruner: Pruner, interval_steps: int, total_times: int,
                 evaluator: Evaluator | None = None, *, progress: bool | None = None) -> None:
        name = type(self).__name__
        Progress(total_times, name, progress)  # validates ``progress`` with the other arguments
        if not isinstance(pruner, Pruner):
            raise TypeError(f"{name}: 'pruner' must be a secateurs pruner built with its config_list "
                            f"(L1NormPruner(model, config_list), ...); got {type(pruner).__name__}.")
        for arg, value in (("interval_steps", interval_steps), ("total_times", total_times)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"The {arg!r} parameter of {name} must be a positive int; got {value!r}.")
        if evaluator is None:
            evaluator = getattr(pruner, "evaluator", None)
            if evaluator is None:
                raise TypeError(f"{name}: {type(pruner).__name__} has no evaluator, and none was given; pass "
                                f"evaluator= (a TorchEvaluator, ...) to run the training the rounds prune in.")
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"{name}: 'evaluator' must be a secateurs Evaluator (TorchEvaluator, "
                            f"LightningEvaluator, TransformersEvaluator); got {type(evaluator).__name__}.")
        thresholds = sorted({s.config_index for s in pruner.settings.values() if s.sparse_ratio is None})
        if thresholds:
            raise ValueError(f"{name}: config_list{thresholds} of the wrapped pruner give no 'sparse_ratio' "
                             f"(a 'sparse_threshold'?); a schedule ramps a ratio, so each config needs one.")
        self.pruner = pruner
        self.interval_steps = interval_steps
        self.total_times = total_times
        self.evaluator = evaluator
        self.final_ratios = {s.config_index: s.sparse_ratio for s in pruner.settings.values()}
        self._settings = pruner.settings
        self.history: list[dict[str, Any]] = []
        self.progress = progress

    @property
    def targets(self) -> list:
        """The wrapped pruner's targets (what each round masks)."""
        return self.pruner.targets

    def calculate_masks(self) -> Masks:
        """Masks at the final ratios from the current (masked) weights, as the wrapped
        pruner computes them; not attached."""
        self._set_ratios(self.final_ratios)
        try:
            return self.pruner.calculate_masks()
        finally:
            self._set_ratios(None)

    @property
    def model(self) -> nn.Module:
        return self.pruner.model

    @property
    def masks(self) -> Masks:
        return self.pruner.masks

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Masks]:
        """Train, pruning every ``interval_steps`` optimizer steps, then fine-tune to the end.

        Args:
            max_steps: optimizer steps to train in all; at least ``interval_steps *
                total_times``. With neither limit given, exactly that many.
            max_epochs: epochs to train (the user's loop decides what an epoch is).

        Returns:
            The model (masks attached in place) and the final masks.

        Raises:
            ValueError: ``max_steps`` is shorter than the rounds need (before any training).
            RuntimeError: the training loop stopped before the last round (the masks of
                the rounds that ran stay attached, and ``history`` lists them).
        """
        name = type(self).__name__
        need = self.interval_steps * self.total_times
        if max_steps is None and max_epochs is None:
            max_steps = need
        if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool)
                                      or max_steps < need):
            raise ValueError(f"{name}.compress: 'max_steps' must be an int >= interval_steps * total_times = "
                             f"{self.interval_steps} * {self.total_times} = {need}; got {max_steps!r}.")
        wrapped = self.pruner
        data = isinstance(wrapped, DataPruner)
        self.history = []
        steps = 0
        last_stats: dict = {}
        bar = Progress(self.total_times, name, self.progress)

        def after_step() -> None:
            nonlocal steps, last_stats
            steps += 1
            k = steps // self.interval_steps
            if steps % self.interval_steps or k > self.total_times:
                return
            ratios = {i: type(self).schedule(k, self.total_times, final) for i, final in self.final_ratios.items()}
            self._set_ratios(ratios)
            if data:
                last_stats = self._finish_stats()
            Pruner.compress(wrapped)
            if data:
                wrapped.stats = {}  # the next round scores the next interval only
            realised = self._realised()
            self.history.append({"round": k, "step": steps, "sparse_ratio": ratios, "sparsity": realised})
            bar.update(k, step=steps, sparsity=sum(realised.values()) / max(len(realised), 1))

        try:
            with self.evaluator.session(wrapped.model) as evaluator:
                if data:
                    wrapped.stats = {}
                    wrapped._install(evaluator)
                evaluator.after_optimizer_step(after_step)
                evaluator.train(max_steps=max_steps, max_epochs=max_epochs)
        finally:
            bar.close()
            self._set_ratios(None)
            if data:
                wrapped.stats = last_stats
        if len(self.history) < self.total_times:
            raise RuntimeError(
                f"{name}: the training loop ran {steps} optimizer steps, but the {self.total_times} rounds need "
                f"{need} (interval_steps * total_times); {len(self.history)} rounds ran. Give the loop enough "
                f"data or epochs, or lower 'interval_steps' or 'total_times'."
            )
        return wrapped.model, wrapped.masks

    def _finish_stats(self) -> dict:
        """Turn the wrapped data pruner's sums over the last interval into scores."""
        wrapped = self.pruner
        inert = {(wrapped.targets[i].module_name, wrapped.targets[i].name)
                 for i, (k, n, _) in wrapped._plan.fixed.items() if k == n}
        missing = [f"{t.module_name}.{t.name}" for t in wrapped.targets if t.name == "weight"
                   and (t.module_name, t.name) not in wrapped.stats and (t.module_name, t.name) not in inert]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: an interval of training gathered nothing for "
                               f"{missing[:5]}; are these modules used in the training forward pass?")
        for value in wrapped.stats.values():
            all_reduce_sum(value)
        wrapped._finish()
        return dict(wrapped.stats)

    def _set_ratios(self, ratios: dict[int, float] | None) -> None:
        """Give the wrapped pruner these per-config ratios (``None``: its own settings back)."""
        wrapped = self.pruner
        settings = self._settings if ratios is None else {
            n: dataclasses.replace(s, sparse_ratio=ratios[s.config_index]) for n, s in self._settings.items()}
        wrapped.settings = settings
        wrapped.targets = [t for s in settings.values() for t in wrapped._targets_of(s)]
        families = [LAYERS.family_of(get_module(wrapped.net, t.module_name)) is not None for t in wrapped.targets]
        wrapped._plan = plan_dependencies(wrapped.targets, wrapped.graph, families)

    def _realised(self) -> dict[str, float]:
        out = {}
        for t in self.pruner.targets:
            mask = self.pruner.masks.get(t.module_name, {}).get(t.name)
            if mask is None:
                out[f"{t.module_name}.{t.name}"] = 0.0
                continue
            gone = to_units(mask.float(), t.blocks, pad=0.0).amax(1) == 0
            out[f"{t.module_name}.{t.name}"] = int(gone.sum()) / gone.numel()
        return out

    def unwrap_model(self) -> None:
        """Detach the masks in place; pruned entries of the parameters become zero."""
        self.pruner.unwrap_model()

    def report(self):
        """The wrapped pruner's sparsity report of the final masks."""
        return self.pruner.report()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped pruner's state (final masks, statistics); see :meth:`Pruner.state_dict`."""
        return self.pruner.state_dict()

    def load_state_dict(self, state: Any) -> None:
        """Restore the wrapped pruner's state; see :meth:`Pruner.load_state_dict`."""
        self.pruner.load_state_dict(state)


@PRUNERS.register("linear")
class LinearPruner(_ScheduledPruner):
    """Prune in ``total_times`` rounds whose sparsity grows linearly: ``s_k = s_f * k / T``.

    NNI 3.0's LinearPruner (same arguments); the schedule is :func:`secateurs.schedules.linear`.
    See :class:`_ScheduledPruner` for the arguments and ``history``.

    Example:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> from secateurs import LevelPruner, TorchEvaluator
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = nn.Sequential(nn.Linear(10, 4))
        >>> data = [(torch.randn(8, 10), torch.randint(0, 4, (8,))) for _ in range(4)]
        >>> def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        ...     for batch in data * 5:
        ...         optimizers.zero_grad()
        ...         training_step(batch, model).backward()
        ...         optimizers.step()
        >>> ev = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1),
        ...                     lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]))
        >>> level = LevelPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.8}])
        >>> pruner = LinearPruner(level, interval_steps=2, total_times=4, evaluator=ev)
        >>> _, masks = pruner.compress(max_steps=10)
        >>> [r["sparsity"]["0.weight"] for r in pruner.history]
        [0.2, 0.4, 0.6, 0.8]
    """

    schedule = staticmethod(linear)
    needs = ("evaluator",)


@PRUNERS.register("agp")
class AGPPruner(_ScheduledPruner):
    """Automated Gradual Pruning: round ``k`` of ``T`` reaches ``s_f * (1 - (1 - k / T) ** 3)``.

    Zhu & Gupta, arXiv 1710.01878 (initial sparsity 0); NNI 3.0's AGPPruner (same
    arguments); the schedule is :func:`secateurs.schedules.agp`. See
    :class:`_ScheduledPruner` for the arguments and ``history``.
    """

    schedule = staticmethod(agp)
    needs = ("evaluator",)
