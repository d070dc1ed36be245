"""LotteryTicketPruner: iterative magnitude pruning with resets to the initial weights.

Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
Networks", arXiv 1803.03635; late rewinding from Frankle, Dziugaite, Roy & Carbin,
"Stabilizing the Lottery Ticket Hypothesis", arXiv 1903.01611.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from .._registry import PRUNERS
from ..criteria import fpgm, l1_norm, l2_norm, magnitude
from ..evaluators.base import Evaluator
from ..masks import MaskDict, Masks, get_masks
from ..schedules import lottery
from .base import Pruner, Target
from .longrun import (
    Rounds,
    check_checkpoint_dir,
    check_evaluator,
    check_steps,
    copy_masks,
    history_from,
    history_tensors,
    mean,
    plain_tensors,
    ratios_of,
    realised,
    require_ratios,
    score_of,
    unprefix,
)

# pruning_algorithm -> (unit, criterion); "l1"/"l2" are NNI 2.10's names.
_ALGORITHMS = {
    "level": ("element", magnitude),
    "l1norm": ("out_channel", l1_norm), "l1": ("out_channel", l1_norm),
    "l2norm": ("out_channel", l2_norm), "l2": ("out_channel", l2_norm),
    "fpgm": ("out_channel", fpgm),
}


@PRUNERS.register("lottery")
class LotteryTicketPruner(Pruner):
    """Find a winning ticket: train, prune the smallest weights, reset the rest, repeat.

    Round ``i = 1 .. total_iteration`` trains the model (``training_steps`` optimizer
    steps or ``training_epochs`` epochs, one call of the user's loop through the
    evaluator, with the masks of the rounds before held in place), prunes each config's
    layers to the sparsity ``1 - (1 - P) ** (i / n)`` (``P`` the config's ``sparse_ratio``;
    already pruned weights are counted first, so each round prunes the same fraction
    of the survivors; globally across a ``global_group_id``), records the evaluator's
    score of the trained, pruned model, and, with ``reset_weight``, sets every parameter
    and buffer back to its value at the start of ``compress()`` (or, with
    ``rewind_step=k``, after optimizer step ``k`` of the first round: late rewinding)
    and the optimizers and LR schedulers back to their state then. After the last round
    the model holds the ticket: exactly ``init * mask`` (``rewound * mask``), to be
    trained from there.

    Args:
        model: the model to prune (in place).
        config_list: see the config reference; each entry needs a ``sparse_ratio``.
        evaluator: runs the training (TorchEvaluator, LightningEvaluator,
            TransformersEvaluator) and scores each round when it can evaluate.
        total_iteration: the number of rounds ``n`` (NNI's name and default, 5).
        training_steps / training_epochs: how long each round trains.
        reset_weight: reset the surviving weights after each round (NNI's default True);
            False gives iterative magnitude pruning with continued training.
        rewind_step: the optimizer step of the first round whose weights (and optimizer
            state) the resets go back to; 0 is the initialisation.
        pruning_algorithm: how units are ranked: ``"level"`` (weights by magnitude, the
            paper's), ``"l1norm"``/``"l1"``, ``"l2norm"``/``"l2"`` or ``"fpgm"`` (output
            channels).
        dummy_input: example inputs for dependency-aware masks (channel algorithms);
            defaults to the evaluator's.
        checkpoint_dir: a folder for a checkpoint after every round; ``compress()`` with
            the same folder resumes after the last one (:mod:`secateurs.pruners.longrun`).
        progress: a line per round on stderr (round i of n, sparsity, score); None (the
            default) shows it only when stderr is a terminal.

    Attributes:
        history: one dict per round: ``"round"``, ``"step"`` (optimizer steps run so far),
            ``"sparse_ratio"`` (config index -> the round's ratio), ``"sparsity"``
            (``"module.target"`` -> fraction pruned), ``"score"`` (the evaluator's score
            of the trained, pruned model before the reset, or None when it cannot
            evaluate) and ``"masks"`` (a CPU copy of the round's masks).

    Example:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> from secateurs import TorchEvaluator
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = nn.Sequential(nn.Linear(10, 4))
        >>> init = model[0].weight.detach().clone()
        >>> data = [(torch.randn(8, 10), torch.randint(0, 4, (8,))) for _ in range(4)]
        >>> def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        ...     for batch in data * 5:
        ...         optimizers.zero_grad()
        ...         training_step(batch, model).backward()
        ...         optimizers.step()
        >>> ev = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1),
        ...                     lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]))
        >>> pruner = LotteryTicketPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.75}], ev,
        ...                              total_iteration=2, training_steps=4)
        >>> _, masks = pruner.compress()
        >>> [r["sparsity"]["0.weight"] for r in pruner.history]
        [0.5, 0.75]
        >>> torch.equal(model[0].weight, init * masks["0"]["weight"])  # the ticket
        True
    """

    needs = ("evaluator", "training_steps")
    default_granularity = "element"

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Evaluator,
                 total_iteration: int = 5, training_steps: int | None = None, training_epochs: int | None = None,
                 reset_weight: bool = True, rewind_step: int = 0, pruning_algorithm: str = "level", *,
                 dummy_input: Any = None, checkpoint_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> None:
        name = type(self).__name__
        check_evaluator(name, evaluator)
        if not isinstance(total_iteration, int) or isinstance(total_iteration, bool) or total_iteration < 1:
            raise ValueError(f"The 'total_iteration' parameter of {name} must be a positive int; got "
                             f"{total_iteration!r}.")
        check_steps(name, training_steps, training_epochs)
        if not isinstance(reset_weight, bool):
            raise TypeError(f"The 'reset_weight' parameter of {name} must be True or False; got {reset_weight!r}.")
        if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or rewind_step < 0:
            raise ValueError(f"The 'rewind_step' parameter of {name} must be an int >= 0; got {rewind_step!r}.")
        if rewind_step and not reset_weight:
            raise ValueError(f"{name}: 'rewind_step' ({rewind_step}) is where the resets go back to, but "
                             f"'reset_weight' is False; set reset_weight=True or leave rewind_step at 0.")
        if rewind_step and training_steps is not None and rewind_step > training_steps:
            raise ValueError(f"{name}: 'rewind_step' ({rewind_step}) must lie within the first round, which "
                             f"trains {training_steps} steps ('training_steps').")
        if pruning_algorithm not in _ALGORITHMS:
            raise ValueError(f"The 'pruning_algorithm' parameter of {name} must be one of "
                             f"{sorted(_ALGORITHMS)}; got {pruning_algorithm!r}.")
        self.default_granularity, self._criterion = _ALGORITHMS[pruning_algorithm]
        super().__init__(model, config_list, dummy_input=dummy_input if dummy_input is not None
                         else evaluator.dummy_input)
        require_ratios(f"{name}: ", self.settings, "; the rounds prune a fraction of the weights, so each config "
                       "needs one.")
        self.evaluator = evaluator
        self.total_iteration = total_iteration
        self.training_steps, self.training_epochs = training_steps, training_epochs
        self.reset_weight, self.rewind_step = reset_weight, rewind_step
        self.pruning_algorithm = pruning_algorithm
        self.checkpoint_dir = check_checkpoint_dir(name, checkpoint_dir)
        Rounds.check_progress(name, progress)
        self.progress = progress
        self.history: list[dict[str, Any]] = []

    def score(self, target: Target, units: torch.Tensor) -> torch.Tensor:
        return self._criterion(units)

    def compress(self) -> tuple[nn.Module, Masks]:
        """Run the rounds; the model ends holding the ticket (masks attached in place).

        Returns:
            The model and the final masks.

        Raises:
            RuntimeError: a round's training stopped before ``training_steps`` steps, or
                the first round ran fewer steps than ``rewind_step``.
            ValueError: the checkpoint in ``checkpoint_dir`` is damaged or of another run
                (before anything changes).
        """
        name = type(self).__name__
        n = self.total_iteration
        rounds = Rounds(name, self.model, self.evaluator, self.checkpoint_dir, {
            "pruner": self.registry_name, "config_list": self.config_list,
            "arguments": {"total_iteration": n, "training_steps": self.training_steps,
                          "training_epochs": self.training_epochs, "reset_weight": self.reset_weight,
                          "rewind_step": self.rewind_step, "pruning_algorithm": self.pruning_algorithm,
                          "dummy_input": self.graph is not None}}, n, self.progress)
        self.history = []
        first = 1
        start: tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], Any]] | None = None
        resumed = rounds.resume()
        if resumed is not None:
            done_round, done, tensors, meta = resumed
            self.history = history_from(tensors, meta["history"])
            if "start" in meta:
                start = unprefix("start", tensors), (unprefix("start_train", tensors), meta["start"])
            self.masks = self._attached()
            if done:
                return self.model, self.masks
            first = done_round + 1
        elif self.reset_weight and self.rewind_step == 0:
            start = self._snapshot()
        final = {s.config_index: s.sparse_ratio for s in self.settings.values()}
        try:
            for k in range(first, n + 1):
                install = None
                if start is None and self.reset_weight:  # late rewinding: capture after step rewind_step
                    captured: list = []

                    def install(evaluator: Evaluator, captured: list = captured) -> None:
                        count = [0]

                        def capture() -> None:
                            count[0] += 1
                            if count[0] == self.rewind_step:
                                captured.append(self._snapshot())

                        evaluator.after_optimizer_step(capture)
                rounds.train(self.training_steps, self.training_epochs, install=install)
                if install is not None:
                    if not captured:
                        raise RuntimeError(f"{name}: the first round ran {rounds.steps} optimizer steps, fewer than "
                                           f"'rewind_step' ({self.rewind_step}).")
                    start = captured[0]
                ratios = {i: lottery(k, n, p) for i, p in final.items()}
                with ratios_of(self, ratios):
                    Pruner.compress(self)
                    sparsity = realised(self.net, self.targets, self.masks)
                score = score_of(self.evaluator, self.model)
                self.history.append({"round": k, "step": rounds.steps, "sparse_ratio": ratios,
                                     "sparsity": sparsity, "score": score, "masks": copy_masks(self.masks)})
                if self.reset_weight:
                    self._reset(start)
                rounds.bar.update(k, sparsity=mean(sparsity), **({"score": score} if score is not None else {}))
                tensors, entries = history_tensors(self.history)
                meta: dict[str, Any] = {"history": entries}
                if start is not None:
                    tensors.update({f"start/{k_}": v for k_, v in start[0].items()})
                    tensors.update({f"start_train/{k_}": v for k_, v in start[1][0].items()})
                    meta["start"] = start[1][1]
                rounds.save(k, tensors, meta, done=k == n)
        finally:
            rounds.bar.close()
        return self.model, self.masks

    def _attached(self) -> Masks:
        masks = MaskDict(get_masks(self.net))
        masks.trace = self.graph
        return masks

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], Any]]:
        """Copies of every parameter and buffer (stored values) and of the training state."""
        weights = {k: v.detach().clone() for k, v in plain_tensors(self.net).items()}
        tensors, meta = self.evaluator.training_state()
        return weights, ({k: v.detach().clone() for k, v in tensors.items()}, meta)

    def _reset(self, start: tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], Any]]) -> None:
        weights, (train_tensors, train_meta) = start
        live = plain_tensors(self.net)
        with torch.no_grad():
            for key, value in weights.items():
                live[key].copy_(value)
        self.evaluator.load_training_state(train_tensors, train_meta)
