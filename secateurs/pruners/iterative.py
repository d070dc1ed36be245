"""Scheduled pruners: LinearPruner and AGPPruner re-prune with a wrapped pruner during training.

Round ``k = 1 .. total_times`` trains ``interval_steps`` optimizer steps of the user's own
training (one call of the loop, through an :class:`~secateurs.evaluators.Evaluator`), then
sets each config's ratio to ``schedule(k, total_times, final)`` (``final`` being the config's own
``sparse_ratio``) and lets the wrapped pruner compute masks on the current masked weights.
The masks are AND-ed with the previous ones (see :meth:`Pruner.calculate_masks`), so the
masks only grow; training then goes on to the end of the budget (fine-tuning).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from .._progress import Progress
from .._registry import PRUNERS
from ..evaluators.base import Evaluator
from ..masks import MaskDict, Masks, get_masks
from ..schedules import agp, linear
from .base import Pruner
from .data import DataPruner, all_reduce_sum
from .longrun import Rounds, check_checkpoint_dir, copy_masks, history_from, history_tensors, mean, ratios_of, realised


class _ScheduledPruner:
    """Shared machinery; subclasses set ``schedule``.

    Args:
        pruner: a pruner already built with its config_list (LevelPruner, L1NormPruner,
            L2NormPruner, FPGMPruner, or a data-driven one). Its model is the one pruned.
        interval_steps: optimizer steps between two pruning rounds.
        total_times: the number of rounds.
        evaluator: runs the training; ``None`` means the wrapped pruner's own evaluator.
        checkpoint_dir: a folder for a checkpoint at every round boundary; ``compress()``
            with the same folder resumes from the last one (see
            :mod:`secateurs.pruners.longrun`).
        progress: show one line on stderr per round (round i of n, step, mean realised
            sparsity); None (default) shows it only when stderr is a terminal.

    Attributes:
        history: one dict per round: ``"round"``, ``"step"`` (optimizer steps run when it
            pruned), ``"sparse_ratio"`` (config index -> the ratio asked for) and
            ``"sparsity"`` (``"module.target"`` -> fraction of its units pruned) and ``"masks"``
            (a CPU copy of the masks after the round).
    """

    schedule: Callable[[int, int, float], float]
    # Registry metadata: built around another pruner (not from a model and config_list);
    # the granularity and op types are the wrapped pruner's.
    wraps = True
    default_granularity = "out_channel"
    default_op_types = ("Conv1d", "Conv2d", "Conv3d", "Linear")

    def __init__(self, pruner: Pruner, interval_steps: int, total_times: int,
                 evaluator: Evaluator | None = None, *, checkpoint_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> None:
        name = type(self).__name__
        Progress(total_times, name, progress)  # validates ``progress`` with the other arguments
        self.checkpoint_dir = check_checkpoint_dir(name, checkpoint_dir)
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
        self.history: list[dict[str, Any]] = []
        self.progress = progress

    @property
    def targets(self) -> list:
        """The wrapped pruner's targets (what each round masks)."""
        return self.pruner.targets

    def calculate_masks(self) -> Masks:
        """Masks at the final ratios from the current (masked) weights, as the wrapped
        pruner computes them; not attached."""
        return self.pruner.calculate_masks()

    @property
    def model(self) -> nn.Module:
        return self.pruner.model

    @property
    def masks(self) -> Masks:
        return self.pruner.masks

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Masks]:
        """Train, pruning every ``interval_steps`` optimizer steps, then fine-tune to the end.

        Round ``k`` trains ``interval_steps`` optimizer steps (one call of the user's loop
        through the evaluator, masks held in place) and then prunes at the schedule's
        ratio. After the last round the model is fine-tuned with the masks attached.

        Args:
            max_steps: optimizer steps to train in all, at least ``interval_steps *
                total_times``; the steps beyond the rounds' are the fine-tuning. With
                neither limit given, exactly the rounds' steps.
            max_epochs: epochs of fine-tuning after the rounds (what an epoch is, the
                user's loop decides); with ``max_steps`` too, the fine-tuning stops at
                whichever comes first.

        Returns:
            The model (masks attached in place) and the final masks.

        Raises:
            ValueError: ``max_steps`` is shorter than the rounds need (before any
                training), or the checkpoint in ``checkpoint_dir`` is damaged or of
                another run (before anything changes).
            RuntimeError: the training loop stopped before a round's steps were done (the
                masks of the rounds that ran stay attached, and ``history`` lists them).
        """
        name = type(self).__name__
        need = self.interval_steps * self.total_times
        if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool)
                                      or max_steps < need):
            raise ValueError(f"{name}.compress: 'max_steps' must be an int >= interval_steps * total_times = "
                             f"{self.interval_steps} * {self.total_times} = {need}; got {max_steps!r}.")
        if max_epochs is not None and (not isinstance(max_epochs, int) or isinstance(max_epochs, bool)
                                       or max_epochs < 1):
            raise ValueError(f"{name}.compress: 'max_epochs' must be a positive int or None; got {max_epochs!r}.")
        wrapped = self.pruner
        data = isinstance(wrapped, DataPruner)
        rounds = Rounds(name, wrapped.model, self.evaluator, self.checkpoint_dir, {
            "pruner": self.registry_name,
            "arguments": {"interval_steps": self.interval_steps, "total_times": self.total_times,
                          "max_steps": max_steps, "max_epochs": max_epochs},
            "wrapped": {"pruner": getattr(wrapped, "registry_name", type(wrapped).__name__),
                        "config_list": wrapped.config_list,
                        "dummy_input": wrapped.graph is not None}}, self.total_times, self.progress)
        self.history = []
        first = 1
        resumed = rounds.resume()
        if resumed is not None:
            done_round, done, tensors, meta = resumed
            self.history = history_from(tensors, meta["history"])
            first = done_round + 1
            if done:
                if data:
                    wrapped._load_extra_state({k: v for k, v in tensors.items() if k.startswith("stats/")})
                wrapped.masks = MaskDict(get_masks(wrapped.net))
                wrapped.masks.trace = wrapped.graph
                return wrapped.model, wrapped.masks
        last_stats: dict = {}
        try:
            for k in range(first, self.total_times + 1):
                if data:
                    wrapped.stats = {}
                rounds.train(self.interval_steps, install=wrapped._install if data else None)
                ratios = {i: type(self).schedule(k, self.total_times, final) for i, final in self.final_ratios.items()}
                with ratios_of(wrapped, ratios):
                    if data:
                        last_stats = self._finish_stats()
                    Pruner.compress(wrapped)
                    sparsity = realised(wrapped.net, wrapped.targets, wrapped.masks)
                self.history.append({"round": k, "step": rounds.steps, "sparse_ratio": ratios, "sparsity": sparsity,
                                     "masks": copy_masks(wrapped.masks)})
                rounds.bar.update(k, step=rounds.steps, sparsity=mean(sparsity))
                tensors, entries = history_tensors(self.history)
                rounds.save(k, tensors, {"history": entries})
            tune = None if max_steps is None else max_steps - need
            if (tune is None and max_epochs is not None) or (tune is not None and tune > 0):
                rounds.train(tune, max_epochs, require=False)
            if data:
                wrapped.stats = last_stats
            wrapped.masks = MaskDict(get_masks(wrapped.net))
            wrapped.masks.trace = wrapped.graph
            tensors, entries = history_tensors(self.history)
            rounds.save(self.total_times + 1, {**tensors, **(wrapped._extra_state() if data else {})},
                        {"history": entries}, done=True)
        finally:
            rounds.bar.close()
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
