"""SimulatedAnnealingPruner and AutoCompressPruner (Liu et al., "AutoCompress: An Automatic
DNN Structured Pruning Framework for Ultra-High Compression Rates", arXiv 1907.03141)."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._progress import Progress
from .._registry import PRUNERS
from ..masks import Masks
from .search import SearchPruner, check_int


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


@PRUNERS.register("simulated_annealing")
class SimulatedAnnealingPruner(SearchPruner):
    """Search per-layer sparsities by simulated annealing, under an exact budget.

    The search (arXiv 1907.03141, section 4.2):

    1. Start: one sparsity per layer drawn from U(0, 1), sorted so that bigger layers get
       the bigger ones, then scaled to the budget.
    2. At temperature ``T`` (from ``start_temperature``): perturb every layer's sparsity by
       U(-m, m) with ``m = perturbation_magnitude * T / start_temperature``, scale to the
       budget, score the candidate.
    3. Accept it when its score is higher; otherwise with probability
       ``exp(-|dE| / T)``, where ``dE`` is the score difference **in thousandths of the
       first candidate's score** (``score_scale`` sets another unit). At T = 100 a move
       that loses 1% of the score is accepted with probability 0.90, at T = 20 with 0.61;
       one that loses 5% with 0.61 and 0.08. (NNI compared raw accuracy differences with
       T = 100, so every move was accepted.)
    4. Cool ``T *= cool_down_rate`` after every candidate; stop once ``T`` is at most
       ``stop_temperature`` (16 candidates after the first with the defaults), or when
       ``max_evaluations`` or ``time_limit`` runs out.

    "Scale to the budget" (:meth:`SearchSpace.fit`) multiplies the sparsities by one
    factor so that the candidate meets the budget and no layer could keep one more unit
    without going over; it always ends, for every budget in (0, 1) that the layers'
    bounds allow (an unreachable one is refused when the pruner is built).

    Args:
        model: the model (unchanged during the search; holds the best candidate's masks
            after ``compress()``).
        config_list: selects the layers; every config gives the same ``sparse_ratio``: the
            budget (NNI 2.x's ``total_sparsity`` works too). ``max_sparse_ratio`` caps a
            layer, ``min_sparse_ratio`` floors it.
        evaluator: a secateurs Evaluator that can evaluate, or a callable ``model -> float``
            (higher is better). Each candidate is scored on a copy of the model.
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: as
            above (NNI's names and defaults).
        pruning_algorithm: how units are ranked inside a layer: ``"level"`` (weights),
            ``"l1"``/``"l1norm"``, ``"l2"``/``"l2norm"``, ``"fpgm"`` (output channels).
        pruning_params: options for the pruning algorithm; the weight criteria take none,
            so only None or ``{}``.
        target: ``"sparsity"`` (of the selected weights), ``"flops"`` or ``"params"`` (of
            the model ModelSpeedup builds; need a channel algorithm and dummy_input).
        seed: seeds the search's own generator (same seed, same result).
        dummy_input: example input (defaults to the evaluator's).
        max_evaluations / time_limit: stop after this many candidates / seconds.
        executor: scores the ``candidates_per_step`` candidates of a step in parallel
            (any ``concurrent.futures.Executor``); results do not depend on it.
        candidates_per_step: proposals per temperature, scored together; the best of them
            is the move tested for acceptance (1, the classic search, by default).
        checkpoint_dir: a checkpoint after every step; the same call resumes there.
        progress: a line per step on stderr (None: only on a terminal).

    Attributes:
        history: one dict per candidate: ``"evaluation"``, ``"sparsity"`` (variable ->
            ratio), ``"counts"``, ``"budget"`` (fraction removed), ``"score"``,
            ``"accepted"``, ``"temperature"``.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> def score(m):  # a known function: pruning layer 2 costs, layer 0 is free
        ...     w = m[2].weight
        ...     return -float((w == 0).float().mean())
        >>> pruner = SimulatedAnnealingPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], score,
        ...                                   seed=0)
        >>> _, masks = pruner.compress()
        >>> round(float(1 - (masks["0"]["weight"].sum() + masks["2"]["weight"].sum()) / 320), 3)
        0.5
        >>> pruner.get_best_result()[2]["0.weight"] > pruner.get_best_result()[2]["2.weight"]
        True
    """

    needs = ("evaluator",)

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any,
                 start_temperature: float = 100, stop_temperature: float = 20, cool_down_rate: float = 0.9,
                 perturbation_magnitude: float = 0.35, pruning_algorithm: str = "level",
                 pruning_params: dict[str, Any] | None = None, target: str = "sparsity", seed: int | None = None,
                 *, dummy_input: Any = None, max_evaluations: int | None = None, time_limit: float | None = None,
                 executor: Executor | None = None, candidates_per_step: int = 1, score_scale: float | None = None,
                 checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
                 _dense: tuple[int, int] | None = None) -> None:
        owner = type(self).__name__
        for key, value in (("start_temperature", start_temperature), ("stop_temperature", stop_temperature),
                           ("perturbation_magnitude", perturbation_magnitude)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"The {key!r} parameter of {owner} must be a number > 0; got {value!r}.")
        if not stop_temperature < start_temperature:
            raise ValueError(f"{owner}: 'stop_temperature' ({stop_temperature}) must be below 'start_temperature' "
                             f"({start_temperature}).")
        if isinstance(cool_down_rate, bool) or not isinstance(cool_down_rate, (int, float)) or \
                not 0 < cool_down_rate < 1:
            raise ValueError(f"The 'cool_down_rate' parameter of {owner} must be in (0, 1); got {cool_down_rate!r}.")
        if pruning_params not in (None, {}):
            raise ValueError(f"{owner}: 'pruning_params' {pruning_params!r}: the weight criteria "
                             f"({pruning_algorithm!r}) take no options; leave it None.")
        check_int(owner, "candidates_per_step", candidates_per_step)
        if score_scale is not None and (isinstance(score_scale, bool) or not isinstance(score_scale, (int, float))
                                        or not score_scale > 0):
            raise ValueError(f"The 'score_scale' parameter of {owner} must be a number > 0 or None; got "
                             f"{score_scale!r}.")
        super().__init__(model, config_list, evaluator, target=target, pruning_algorithm=pruning_algorithm,
                         dummy_input=dummy_input, seed=seed, max_evaluations=max_evaluations,
                         time_limit=time_limit, executor=executor, checkpoint_dir=checkpoint_dir,
                         progress=progress, dense=_dense)
        self.start_temperature, self.stop_temperature = float(start_temperature), float(stop_temperature)
        self.cool_down_rate, self.perturbation_magnitude = float(cool_down_rate), float(perturbation_magnitude)
        self.candidates_per_step, self.score_scale = candidates_per_step, score_scale

    @property
    def steps(self) -> int:
        """Temperature steps after the first candidate: cooled until ``T <= stop_temperature``."""
        return max(0, math.ceil(math.log(self.stop_temperature / self.start_temperature)
                                / math.log(self.cool_down_rate) - 1e-9))

    def _start(self, rng: np.random.Generator) -> torch.Tensor:
        space = self.space
        draws = np.sort(rng.uniform(0, 1, len(space.variables)))
        by_size = np.argsort([v.size for v in space.variables], kind="stable")
        ratios = np.empty(len(draws))
        ratios[by_size] = draws  # the biggest variable gets the biggest draw
        return space.fit(ratios)

    def compress(self) -> tuple[nn.Module, Masks]:
        """Run the search; the model ends with the best candidate's masks attached.

        Returns:
            The model and the masks.
        """
        space = self.space
        rng = np.random.default_rng(self.seed)
        fingerprint = self.fingerprint({
            "start_temperature": self.start_temperature, "stop_temperature": self.stop_temperature,
            "cool_down_rate": self.cool_down_rate, "perturbation_magnitude": self.perturbation_magnitude,
            "candidates_per_step": self.candidates_per_step, "score_scale": self.score_scale,
            "ratio": self.ratio, "max_evaluations": self.max_evaluations})
        self._started = time.monotonic()
        bar = Progress(self.steps + 1, type(self).__name__, self.progress, noun="step")
        resumed = self.load_state(fingerprint)
        if resumed is None:
            self.history, self._best, self._evaluations = [], None, 0
            current = self._start(rng)
            (score,) = self.evaluate([current])
            self.record(current, score, accepted=True, temperature=self.start_temperature)
            step, temperature, reference = 0, self.start_temperature, score
            self._save(0, current, score, temperature, reference, rng, fingerprint)
        else:
            step, _, state = resumed
            current = torch.tensor(state["current"])
            score, temperature, reference = state["score"], state["temperature"], state["reference"]
            _set_rng_state(rng, state["rng"])
            if state["done"]:
                return self._finish()
        unit = self.score_scale if self.score_scale is not None else (abs(reference) / 1000 or 1e-3)
        try:
            while step < self.steps:
                asked = self.budget_left(self.candidates_per_step)
                if asked == 0:
                    break
                magnitude = self.perturbation_magnitude * temperature / self.start_temperature
                base = np.asarray(space.ratios(current))
                proposals = [space.fit(np.clip(base + rng.uniform(-magnitude, magnitude, len(base)), 0, 1))
                             for _ in range(asked)]
                scores = self.evaluate(proposals)
                pick = int(np.argmax(scores))
                delta = (scores[pick] - score) / unit
                u = rng.uniform()
                accepted = delta > 0 or u < math.exp(-abs(delta) / temperature)
                for i, (c, s) in enumerate(zip(proposals, scores)):
                    self.record(c, s, accepted=bool(accepted and i == pick), temperature=temperature)
                if accepted:
                    current, score = proposals[pick], scores[pick]
                temperature *= self.cool_down_rate
                step += 1
                bar.update(step + 1, **{self.target: space.reached(current), "score": score,
                                        "best": self._best[1]})
                self._save(step, current, score, temperature, reference, rng, fingerprint)
        finally:
            bar.close()
        self._save(step, current, score, temperature, reference, rng, fingerprint, done=True)
        return self._finish()

    def _save(self, step, current, score, temperature, reference, rng, fingerprint, done=False) -> None:
        self.save_state(step, {}, {"current": [int(c) for c in current], "score": score, "temperature": temperature,
                                   "reference": reference, "rng": _rng_state(rng), "done": done}, fingerprint)
