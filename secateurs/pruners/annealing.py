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
from .base import Pruner
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
                 checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None) -> None:
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
                         progress=progress)
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


_SA_KEYS = ("start_temperature", "stop_temperature", "cool_down_rate", "perturbation_magnitude", "pruning_algorithm",
            "target", "max_evaluations", "time_limit", "candidates_per_step", "score_scale")
_ADMM_KEYS = ("iterations", "training_steps", "training_epochs", "rho")
_RATIO_KEYS = ("sparse_ratio", "sparsity", "sparsity_per_layer", "total_sparsity")


@PRUNERS.register("auto_compress")
class AutoCompressPruner(Pruner):
    """AutoCompress: rounds of simulated annealing (per-layer sparsities) then ADMM (pruning).

    Round ``i = 1 .. total_iteration`` (arXiv 1907.03141, Algorithm 1):

    1. the round's budget is ``1 - (1 - P) ** (i / N)`` of the target (``P`` the config's
       ``sparse_ratio``), so each round removes the same fraction of what is left;
    2. :class:`SimulatedAnnealingPruner` searches the per-layer sparsities that meet it,
       scoring candidates on copies of the current model (the earlier rounds' masks stay);
    3. :class:`~secateurs.ADMMPruner` trains the model towards exactly those per-layer
       sparsities and prunes to them (hard pruning from the trained weights), so the
       round's result meets its budget as tightly as the searched candidate did.

    The model ends with the last round's masks attached (fine-tune it afterwards).

    Args:
        model: the model (pruned in place).
        config_list: as for SimulatedAnnealingPruner: one ``sparse_ratio`` over the
            selected layers, the final budget.
        evaluator: a secateurs Evaluator that both trains (ADMM) and evaluates (the
            search): for example TorchEvaluator with an ``evaluating_func``.
        total_iteration: the number of rounds ``N`` (NNI's default 3).
        admm_params: ``iterations`` (ADMM rounds per AutoCompress round, default 3),
            ``training_steps`` or ``training_epochs`` (per ADMM round; one is required) and
            ``rho`` (default 1e-4).
        sa_params: SimulatedAnnealingPruner's arguments: ``start_temperature``,
            ``stop_temperature``, ``cool_down_rate``, ``perturbation_magnitude``,
            ``pruning_algorithm`` (default ``"l1"``: AutoCompress prunes structure),
            ``target`` (default ``"sparsity"``; ``"flops"``, ``"params"``),
            ``max_evaluations``, ``time_limit``, ``candidates_per_step``, ``score_scale``.
        dummy_input: example input (defaults to the evaluator's); needed for FLOPs or
            parameter targets.
        seed: seeds each round's search (round i uses ``seed + i``).
        executor: scores candidates of the search in parallel.
        checkpoint_dir: each round's search and ADMM checkpoint here, and the model after
            each round; ``compress()`` with the same folder resumes.
        progress: progress lines on stderr (None: only on a terminal).

    Attributes:
        history: per round ``"round"``, ``"ratio"``, ``"sparsity"`` (variable -> ratio the
            search chose), ``"budget"`` (fraction removed), ``"search_score"`` and
            ``"score"`` (the evaluator's score after ADMM's pruning).
    """

    needs = ("evaluator", "training_steps")
    default_granularity = "out_channel"
    budget_over_layers = True

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, total_iteration: int = 3,
                 admm_params: dict[str, Any] | None = None, sa_params: dict[str, Any] | None = None, *,
                 training_steps: int | None = None, dummy_input: Any = None, seed: int | None = None,
                 executor: Executor | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> None:
        from ..evaluators.base import Evaluator
        from .longrun import check_checkpoint_dir

        owner = type(self).__name__
        if not isinstance(evaluator, Evaluator) or not evaluator.can_evaluate():
            raise TypeError(f"{owner}: 'evaluator' must be a secateurs Evaluator that can train and evaluate (ADMM "
                            f"trains, the search scores); got {type(evaluator).__name__}.")
        check_int(owner, "total_iteration", total_iteration)
        admm = dict(admm_params or {})
        sa = dict(sa_params or {})
        for label, given, known in (("admm_params", admm, _ADMM_KEYS), ("sa_params", sa, _SA_KEYS)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ValueError(f"{owner}: unknown {label} key(s) {unknown}; known: {list(known)}.")
        if training_steps is not None:  # the registry's generic "training_steps" need
            admm.setdefault("training_steps", training_steps)
        if admm.get("training_steps") is None and admm.get("training_epochs") is None:
            raise ValueError(f"{owner}: admm_params must give 'training_steps' or 'training_epochs' (how long each "
                             f"ADMM round trains).")
        admm.setdefault("iterations", 3)
        sa.setdefault("pruning_algorithm", "l1")
        sa.setdefault("target", "sparsity")
        self.default_granularity = "element" if sa["pruning_algorithm"] == "level" else "out_channel"
        dummy_input = dummy_input if dummy_input is not None else evaluator.dummy_input
        super().__init__(model, config_list, dummy_input=dummy_input)
        self.evaluator, self.total_iteration = evaluator, total_iteration
        self.admm_params, self.sa_params = admm, sa
        self.seed, self.executor, self.progress = seed, executor, progress
        self.checkpoint_dir = check_checkpoint_dir(owner, checkpoint_dir)
        # Every argument of the search and of ADMM is checked now, on the final budget.
        self._search(self.total_iteration, 0)
        self.history: list[dict[str, Any]] = []

    def calculate_masks(self) -> Masks:
        """The masks attached to the model (AutoCompress's masks come out of ADMM's training,
        round by round; they cannot be recomputed from the weights alone)."""
        from ..masks import get_masks

        return {m: {t: v.detach().clone() for t, v in e.items()} for m, e in get_masks(self.net).items()}

    def _configs(self, ratio: float) -> list[dict[str, Any]]:
        out = []
        for cfg in self.config_list:
            cfg = dict(cfg)
            for key in _RATIO_KEYS:
                if key in cfg:
                    cfg[key] = ratio
            out.append(cfg)
        return out

    def _search(self, k: int, round_seed: int) -> SimulatedAnnealingPruner:
        from ..schedules import lottery

        ratio = lottery(k, self.total_iteration, self.settings_ratio())
        folder = self.checkpoint_dir / f"round-{k}" / "search" if self.checkpoint_dir is not None else None
        return SimulatedAnnealingPruner(self.model, self._configs(ratio), self.evaluator, seed=round_seed,
                                        dummy_input=self.dummy_input, executor=self.executor, checkpoint_dir=folder,
                                        progress=self.progress, **self.sa_params)

    def settings_ratio(self) -> float:
        ratios = {s.sparse_ratio for s in self.settings.values()}
        if len(ratios) != 1 or None in ratios:
            raise ValueError(f"{type(self).__name__}: every config must give the same 'sparse_ratio' (the final "
                             f"budget); got {sorted(map(str, ratios))}.")
        return ratios.pop()

    def compress(self) -> tuple[nn.Module, Masks]:
        """Run the rounds; the model ends with the last round's masks attached."""
        from ..masks import MaskDict, attach_masks, detach_masks, get_masks
        from .admm import ADMMPruner
        from .longrun import Rounds, history_from, history_tensors, score_of

        owner = type(self).__name__
        n = self.total_iteration
        rounds = Rounds(owner, self.model, self.evaluator,
                        self.checkpoint_dir / "rounds" if self.checkpoint_dir is not None else None,
                        {"pruner": self.registry_name, "config_list": self.config_list,
                         "arguments": {"total_iteration": n, "admm_params": self.admm_params,
                                       "sa_params": self.sa_params, "seed": self.seed,
                                       "dummy_input": self.dummy_input is not None}}, n, self.progress)
        first = 1
        self.history = []
        resumed = rounds.resume()
        if resumed is not None:
            done_round, done, tensors, meta = resumed
            self.history = history_from(tensors, meta["history"])
            first = done_round + 1
        try:
            for k in range(first, n + 1):
                search = self._search(k, (self.seed or 0) + k)
                before = get_masks(self.net)
                before = {m: {t: v.clone() for t, v in e.items()} for m, e in before.items()}
                search.compress()
                _, search_score, _ = search.get_best_result()
                counts = search._best[0]
                detach_masks(self.net, apply=False)  # ADMM chooses the units; the search chose how many
                if before:
                    attach_masks(self.net, before)
                space = search.space
                configs = []
                for v, slot, c in zip(space.variables, space.slots, counts):
                    modules = list(dict.fromkeys(key[0] for key in slot.keys))
                    cfg = {"op_names": modules, "sparse_ratio": (c + 0.5) / v.n}
                    granularity = self.settings[modules[0]].granularity
                    if granularity != "default":
                        cfg["granularity"] = granularity
                    if "rho" in self.admm_params:
                        cfg["rho"] = self.admm_params["rho"]
                    configs.append(cfg)
                admm = ADMMPruner(
                    self.model, configs, self.evaluator, self.admm_params["iterations"],
                    training_epochs=self.admm_params.get("training_epochs"),
                    training_steps=self.admm_params.get("training_steps"),
                    granularity="fine-grained" if self.default_granularity == "element" else "coarse-grained",
                    dummy_input=self.dummy_input, progress=self.progress,
                    checkpoint_dir=self.checkpoint_dir / f"round-{k}" / "admm"
                    if self.checkpoint_dir is not None else None)
                _, masks = admm.compress()
                got = [int(c) for c in _counts(space, admm)]
                if got != list(counts):
                    raise RuntimeError(f"{owner}: round {k}: ADMM pruned {got} units per variable, not the "
                                       f"searched {list(counts)}; this is a bug.")
                score = score_of(self.evaluator, self.model)
                self.history.append({"round": k, "ratio": space.ratio,
                                     "sparsity": dict(zip((v.name for v in space.variables), space.ratios(
                                         torch.tensor(counts)))),
                                     "budget": space.reached(torch.tensor(counts)),
                                     "search_score": search_score, "score": score})
                rounds.bar.update(k, **{space.target: space.reached(torch.tensor(counts)), "score": score})
                tensors, entries = history_tensors(self.history)
                rounds.save(k, tensors, {"history": entries}, done=k == n)
        finally:
            rounds.bar.close()
        self.masks = MaskDict(get_masks(self.net))
        self.masks.trace = self.graph
        return self.model, self.masks


def _counts(space, pruner: Pruner) -> list[int]:
    """Pruned units per search variable in the masks attached to ``pruner``'s model."""
    from ..masks import get_masks

    slots = space.pruner._slots(get_masks(pruner.net))
    return [int((s.scores == -float("inf")).sum()) for s in slots]
