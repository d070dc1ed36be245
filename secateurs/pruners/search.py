"""What the search pruners share: per-layer sparsities under an exact budget, candidate scoring.

SimulatedAnnealing, AutoCompress and AMC search for per-layer sparsities instead of taking
them from the config. The search runs over *variables*: one per ranking slot of the
pruner (a layer ranked on its own, or a dependency group of layers that share channels,
which must be pruned alike). A candidate is a count of pruned units per variable; the
units pruned are always the lowest-scored by the pruning algorithm, so a candidate is
exactly reproducible from its counts.

Budgets (:class:`SearchSpace`), for ``sparse_ratio = P`` in the config:

* ``target="sparsity"``: at least ``P`` of the selected tensors' elements masked;
* ``target="flops"`` / ``"params"``: the model that ModelSpeedup would build from the
  masks has at most ``1 - P`` of the dense model's FLOPs (MACs, as
  :func:`~secateurs.analysis.count_flops_params` counts them) or parameters.

The cost of a candidate is computed from its counts without building the model: a
parameter that loses channels keeps the product of its kept sizes, a layer's FLOPs scale
with its weight's kept fraction. That rule is checked once against a real ModelSpeedup of
a probe candidate; a model it does not hold for is refused. Every candidate a search
produces meets its budget and is tight: no variable could keep one more unit without
going over. No variable is ever emptied (a layer keeps at least one unit, a branch of a
concatenation at least one channel) and ``max_sparse_ratio`` caps each.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._progress import Progress
from ..analysis import count_flops_params
from ..checkpoint import checkpoints, prune_checkpoints, save_checkpoint
from ..criteria import fpgm, l1_norm, l2_norm, magnitude
from ..evaluators.base import Evaluator
from ..masks import MaskDict, Masks, attach_masks, detach_masks, get_masks
from ..sparsity import Slot, to_units
from ..targets import get_module
from .base import Pruner, Target
from .longrun import check_checkpoint_dir, model_fingerprint, read_checkpoint, realised

TARGETS = ("sparsity", "flops", "params")
# pruning_algorithm -> (unit, criterion); "l1"/"l2" are NNI 2.10's names.
ALGORITHMS = {
    "level": ("element", magnitude),
    "l1norm": ("out_channel", l1_norm), "l1": ("out_channel", l1_norm),
    "l2norm": ("out_channel", l2_norm), "l2": ("out_channel", l2_norm),
    "fpgm": ("out_channel", fpgm),
}


@dataclass
class Variable:
    """One searched quantity: the pruned units of one ranking slot.

    Attributes:
        name: ``"module.target"`` of its members, joined by ``" + "``.
        n: its units (channel groups, channels or weights).
        low / high: bounds on the pruned count (already-masked units, ``min_sparse_ratio``;
            ``max_sparse_ratio``, and always ``n - 1``: a layer is never emptied).
        size: elements of its member tensors (bigger layers start sparser).
        order: its units, lowest-scored first.
    """

    name: str
    n: int
    low: int
    high: int
    size: int
    order: torch.Tensor


class SearchSpace:
    """The variables of a pruner, the exact cost of a candidate and the budget.

    Args:
        pruner: a Pruner whose settings, targets and plan are built (scores are taken
            from its current weights).
        target: ``"sparsity"``, ``"flops"`` or ``"params"``.
        ratio: the fraction to remove (the config's ``sparse_ratio``).
        dense: (FLOPs, params) of the dense model, when known (else counted here).

    Raises:
        ValueError: the budget is out of reach within the bounds, the target needs
            channel pruning with ``dummy_input``, or the cost rule does not hold for
            the model.
    """

    def __init__(self, pruner: Pruner, target: str, ratio: float, dense: tuple[int, int] | None = None) -> None:
        self.pruner, self.target, self.ratio = pruner, target, float(ratio)
        owner = type(pruner).__name__
        self.existing = get_masks(pruner.net)
        self.slots: list[Slot] = pruner._slots(self.existing)
        n_alone = len(self.slots) - len(pruner._plan.slots)
        by_key = {(t.module_name, t.name): t for t in pruner.targets}
        graph = pruner.graph
        self.variables: list[Variable] = []
        self._elements: list[torch.Tensor] = []  # per variable: masked elements after k (own tensors, no graph)
        self._comps: list[tuple[torch.Tensor, torch.Tensor] | None] = []  # (comps in order, offsets per k)
        for i, slot in enumerate(self.slots):
            scores = slot.scores.detach().cpu()
            if scores.dim() == 2 or (i >= n_alone and pruner._plan.slots[i - n_alone].rows):
                raise ValueError(f"{owner}: 'per_channel' granularity ({', '.join(k[0] for k in slot.keys)}) ranks "
                                 f"inside each row; the search sets one count per layer, so it is not searched.")
            n = scores.shape[-1]
            order = torch.sort(scores, stable=True).indices
            low = max(slot.min_count, int((scores == -math.inf).sum()))
            high = max(low, min(slot.max_count, n - 1))
            zero = torch.zeros(1, dtype=torch.float64)
            if i < n_alone:
                members = [by_key[slot.keys[0]]]
                per_unit = to_units(torch.ones(members[0].shape), members[0].blocks, pad=0.0).sum(1).double()
                self._elements.append(torch.cat([zero, per_unit[order].cumsum(0)]))
                self._comps.append(None)
            else:
                d = pruner._plan.slots[i - n_alone]
                members = [pruner.targets[m] for m in d.members]
                elems = torch.zeros(n, dtype=torch.float64)  # per channel group, of members without a trace
                groups, comps = [], []
                for m, g, comp in zip(d.members, d.groups, d.comps):
                    ok = g >= 0
                    if comp is None:
                        t = pruner.targets[m]
                        elems.index_add_(0, g[ok], to_units(torch.ones(t.shape), t.blocks, pad=0.0).sum(1).double()[ok])
                    else:
                        groups.append(g[ok])
                        comps.append(comp[ok])
                self._elements.append(torch.cat([zero, elems[order].cumsum(0)]))
                if groups:
                    # The graph components of the groups, in pruning order: group order[j]'s come j-th.
                    rank = torch.empty(n, dtype=torch.long)
                    rank[order] = torch.arange(n)
                    by_rank = rank[torch.cat(groups)]
                    sorted_rank, perm = torch.sort(by_rank, stable=True)
                    offsets = torch.cat([torch.zeros(1, dtype=torch.long),
                                         torch.bincount(sorted_rank, minlength=n).cumsum(0)])
                    self._comps.append((torch.cat(comps)[perm], offsets))
                else:
                    self._comps.append(None)
            name = " + ".join(f"{t.module_name}.{t.name}" for t in members)
            self.variables.append(Variable(name, n, low, high, sum(math.prod(t.shape) for t in members), order))
        self.low = torch.tensor([v.low for v in self.variables])
        self.high = torch.tensor([v.high for v in self.variables])
        self.n = torch.tensor([v.n for v in self.variables])
        self._build_meter(owner, graph, dense, members_of=[
            [by_key[k] for k in slot.keys] for slot in self.slots])
        self.budget = self._budget()
        if self.cost(self.high) > self.budget:
            reach = 1 - self.cost(self.high) / self.total
            raise ValueError(
                f"{owner}: target={target!r} with sparse_ratio {ratio} is out of reach: pruning every selected "
                f"layer as far as its bounds allow (max_sparse_ratio, at least one unit kept per layer) removes "
                f"only {reach:.4f} of the {self._noun()}. Lower the ratio, or select more layers."
            )

    # -- cost -------------------------------------------------------------------------
    def _noun(self) -> str:
        return {"sparsity": "selected weights", "flops": "dense model's FLOPs", "params": "dense model's parameters"}[
            self.target]

    def _build_meter(self, owner: str, graph, dense, members_of: list[list[Target]]) -> None:
        pruner = self.pruner
        targets = [t for ts in members_of for t in ts]
        self.selected = sum(math.prod(t.shape) for t in targets)
        self._graph_vars = [i for i, c in enumerate(self._comps) if c is not None]
        if self.target == "sparsity":
            touched = {f"{t.module_name}.{t.name}" for i in self._graph_vars for t in members_of[i]}
            if graph is not None and self._graph_vars:
                loose = [f"{t.module_name}.{t.name}" for i, ts in enumerate(members_of) if i not in self._graph_vars
                         for t in ts if f"{t.module_name}.{t.name}" in graph.tensors]
                if loose:
                    raise ValueError(f"{owner}: cannot count the sparsity of {', '.join(loose)} exactly: their own "
                                     f"units are ranked alone but other layers' channels also mask them. Exclude "
                                     f"them or use a channel pruning_algorithm for every layer.")
            self._params = sorted(touched)
            self.total = float(self.selected)
        else:
            if graph is None:
                raise ValueError(f"{owner}: target={self.target!r} counts the model that ModelSpeedup builds, "
                                 f"which needs the model traced: give dummy_input (or an evaluator with one).")
            if self.pruner.default_granularity == "element" or len(self._graph_vars) < len(self.variables):
                alone = [v.name for i, v in enumerate(self.variables) if i not in self._graph_vars]
                raise ValueError(
                    f"{owner}: target={self.target!r} counts the model that ModelSpeedup builds, which removes "
                    f"only whole channels; these selected tensors would not shrink it: {', '.join(alone[:5])}. "
                    f"Use a channel pruning_algorithm ('l1', 'l2', 'fpgm') and select layers whose output "
                    f"channels the trace can follow.")
            params = _plain_params(pruner.net)
            self._params = sorted(k for k in graph.tensors if k in params)
        self._ids_setup(graph)
        if self.target != "sparsity":
            flops, n_params, rows = count_flops_params(pruner.net, pruner.dummy_input)
            self.rows = rows
            self._row_param = [self._param_index.get(f"{r['name']}.weight", -1) for r in rows]
            # A row without a followed weight keeps its FLOPs: it reads the extra 1.0 after the fractions.
            self._row_index = torch.tensor([p if p >= 0 else len(self._params) for p in self._row_param])
            self._row_flops = torch.tensor([float(r["flops"]) for r in rows], dtype=torch.float64)
            untouched = sum(p.numel() for k, p in _plain_params(pruner.net).items() if k not in self._param_index)
            self._untouched_params = float(untouched)
            self.dense = (flops, n_params) if dense is None else dense
            self.total = float(self.dense[0] if self.target == "flops" else self.dense[1])
            norm_rows = [r["name"] for r, p in zip(rows, self._row_param) if p < 0 and r["name"] in graph.modules
                         and graph.modules[r["name"]].in_ids is not None and bool(
                             (~graph.fixed[graph.component[graph.modules[r["name"]].in_ids]]).any())]
            if norm_rows:
                raise ValueError(f"{owner}: target={self.target!r}: cannot count the FLOPs of {', '.join(norm_rows)} "
                                 f"from kept channels (no weight to follow); exclude their inputs' layers or use "
                                 f"target='sparsity'.")
            self._check_rule(owner)

    def _ids_setup(self, graph) -> None:
        self._param_index = {k: i for i, k in enumerate(self._params)}
        if graph is None or not self._params:
            self._seg_comp = torch.zeros(0, dtype=torch.long)
            return
        comps, segs, sizes, seg_param, numel = [], [], [], [], []
        s = 0
        for p, fqn in enumerate(self._params):
            owner, _, attr = fqn.rpartition(".")
            shape = getattr(get_module(self.pruner.net, owner), attr).shape
            numel.append(math.prod(shape))
            for ids in graph.tensors[fqn].values():
                comps.append(graph.component[ids])
                segs.append(torch.full((ids.numel(),), s, dtype=torch.long))
                sizes.append(ids.numel())
                seg_param.append(p)
                s += 1
        self._seg_comp = torch.cat(comps)
        self._seg_id = torch.cat(segs)
        self._seg_size = torch.tensor(sizes, dtype=torch.float64)
        self._seg_param = torch.tensor(seg_param)
        self._numel = torch.tensor(numel, dtype=torch.float64)
        self._n_comps = graph.fixed.numel()

    def removed(self, counts: torch.Tensor) -> torch.Tensor:
        """Graph components removed by a candidate."""
        out = torch.zeros(getattr(self, "_n_comps", 0), dtype=torch.bool)
        for i in self._graph_vars:
            comps, offsets = self._comps[i]
            out[comps[: int(offsets[int(counts[i])])]] = True
        return out

    def _kept_fraction(self, counts: torch.Tensor) -> torch.Tensor:
        if not self._params or self._seg_comp.numel() == 0:
            return torch.ones(len(self._params), dtype=torch.float64)
        kept = (~self.removed(counts)[self._seg_comp]).double()
        per_seg = torch.zeros(len(self._seg_size), dtype=torch.float64).index_add_(0, self._seg_id, kept)
        frac = torch.ones(len(self._params), dtype=torch.float64)
        return frac.scatter_reduce(0, self._seg_param, per_seg / self._seg_size, "prod")

    def cost(self, counts: torch.Tensor) -> float:
        """What a candidate keeps: elements of the selected tensors, or the FLOPs or
        parameters of the model ModelSpeedup would build."""
        counts = torch.as_tensor(counts)
        frac = self._kept_fraction(counts)
        if self.target == "sparsity":
            masked = sum(float(self._elements[i][int(counts[i])]) for i in range(len(self.variables))
                         if i not in self._graph_vars)
            graph_masked = float((self._numel * (1 - frac)).sum()) if self._params else 0.0
            return self.selected - masked - graph_masked
        if self.target == "params":
            return self._untouched_params + float((self._numel * frac).sum())
        row_frac = torch.cat([frac, torch.ones(1, dtype=torch.float64)])[self._row_index]
        return float((self._row_flops * row_frac).sum())

    def _budget(self) -> float:
        return (1 - self.ratio) * self.total

    def reached(self, counts: torch.Tensor) -> float:
        """The fraction of the selected weights, FLOPs or parameters a candidate removes."""
        return 1 - self.cost(counts) / self.total

    def _check_rule(self, owner: str) -> None:
        """Compare the cost rule with a real ModelSpeedup of a probe candidate."""
        from ..speedup import ModelSpeedup

        probe = (self.low + self.high + 1) // 2
        masks = self.masks(probe)
        net = copy.deepcopy(self.pruner.net)
        detach_masks(net, apply=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ModelSpeedup(net, self.pruner.dummy_input, masks).speedup_model()
        flops, params, rows = count_flops_params(net, self.pruner.dummy_input)
        got = flops if self.target == "flops" else params
        want = self.cost(probe)
        if abs(got - want) > 1e-6 * max(want, 1):
            frac = self._kept_fraction(probe)
            real = {r["name"]: r["flops"] for r in rows}
            off = [f"{r['name']} ({real.get(r['name'])} vs {r['flops'] * (float(frac[p]) if p >= 0 else 1):.0f})"
                   for r, p in zip(self.rows, self._row_param)
                   if abs(real.get(r["name"], 0) - r["flops"] * (float(frac[p]) if p >= 0 else 1)) > 0.5]
            raise ValueError(
                f"{owner}: target={self.target!r}: the {self.target} of the sped-up model cannot be predicted from "
                f"its kept channels for this model (probe: {got} counted, {want:.0f} predicted"
                f"{'; layers: ' + ', '.join(off[:5]) if off else ''}). Use target='sparsity'.")

    # -- candidates -------------------------------------------------------------------
    def counts(self, ratios: Sequence[float]) -> torch.Tensor:
        """Counts for per-variable ratios (floor of ``n * r``, within the bounds)."""
        r = torch.as_tensor(ratios, dtype=torch.float64).clamp(0, 1)
        return torch.maximum(torch.minimum(torch.floor(self.n * r + 1e-9).long(), self.high), self.low)

    def fit(self, ratios: Sequence[float]) -> torch.Tensor:
        """The candidate nearest ``ratios`` in shape that meets the budget tightly.

        The ratios are scaled by one factor, found by bisection: the smallest scale whose
        counts meet the budget. Then each variable in turn gives back one pruned unit while
        the budget still holds, until none can: the result prunes no more than it must.
        """
        r = torch.as_tensor(ratios, dtype=torch.float64).clamp(min=0)
        if not bool((r > 0).any()):
            r = torch.ones_like(r)
        hi = 1.0 / float(r[r > 0].min())
        if self.cost(self.counts(r * hi)) > self.budget:
            r = r + 1e-3 * float(r.max())  # variables at ratio 0 must prune too
            hi = 1.0 / float(r.min())  # every variable at its bound: within budget (checked at construction)
        lo = 0.0
        if self.cost(self.counts(r * lo)) <= self.budget:
            hi = lo
        for _ in range(64):
            if hi - lo <= 1e-12 * hi or bool((self.counts(r * lo) - self.counts(r * hi)).abs().sum() <= 1):
                break
            mid = (lo + hi) / 2
            if self.cost(self.counts(r * mid)) <= self.budget:
                hi = mid
            else:
                lo = mid
        return self._give_back(self.counts(r * hi), r * hi)

    def _give_back(self, counts: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        """Restore single units while the budget holds (smallest shortfall first)."""
        counts = counts.clone()
        short = self.n.double() * wanted.clamp(max=1) - counts.double()
        order = torch.sort(short, stable=True).indices.tolist()
        changed = True
        while changed:
            changed = False
            for i in order:
                if counts[i] > self.low[i]:
                    counts[i] -= 1
                    if self.cost(counts) <= self.budget:
                        changed = True
                    else:
                        counts[i] += 1
        return counts

    def tight(self, counts: torch.Tensor) -> bool:
        """Does the candidate meet the budget with no unit it could give back?"""
        if self.cost(counts) > self.budget:
            return False
        for i in range(len(self.variables)):
            if counts[i] > self.low[i]:
                fewer = counts.clone()
                fewer[i] -= 1
                if self.cost(fewer) <= self.budget:
                    return False
        return True

    def keeps(self, counts: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for v, slot, k in zip(self.variables, self.slots, counts.tolist()):
            keep = torch.ones(slot.scores.shape, dtype=torch.bool)
            keep[v.order[:k]] = False
            out.append(keep.to(slot.scores.device))
        return out

    def masks(self, counts: torch.Tensor) -> Masks:
        """The masks of a candidate (AND-ed with the masks attached when the search began)."""
        return self.pruner._masks_from_keeps(self.slots, self.keeps(torch.as_tensor(counts)), self.existing)

    def ratios(self, counts: torch.Tensor) -> list[float]:
        return [int(k) / v.n for k, v in zip(counts, self.variables)]

    def digest(self) -> str:
        """SHA-256 of every variable's unit order (the scores' ranking): a resumed search
        must rank as the interrupted one did."""
        h = hashlib.sha256()
        for v in self.variables:
            h.update(v.order.numpy().astype(np.int64).tobytes())
        return h.hexdigest()


def _plain_params(net: nn.Module) -> dict[str, torch.Tensor]:
    from .longrun import _plain_name

    params = {}
    for key, value in net.named_parameters():
        name = _plain_name(key)
        if name is not None:
            params[name] = value
    return params


# -- scoring ----------------------------------------------------------------------------
def score_candidate(scorer: Evaluator | Callable[[nn.Module], float], model: nn.Module, masks: Masks) -> float:
    """Attach ``masks`` to ``model`` (a copy) and score it; runs in executor workers too."""
    attach_masks(model, masks)
    if isinstance(scorer, Evaluator):
        with scorer.session(model) as bound:
            return float(bound.evaluate())
    return float(scorer(model))


def check_scorer(owner: str, evaluator: Any) -> None:
    if isinstance(evaluator, Evaluator):
        if not evaluator.can_evaluate():
            raise ValueError(f"{owner}: the evaluator cannot evaluate (give TorchEvaluator an evaluating_func); the "
                             f"search scores every candidate with it.")
        return
    if not callable(evaluator):
        raise TypeError(f"{owner}: 'evaluator' must be a secateurs Evaluator or a callable model -> float (higher "
                        f"is better); got {type(evaluator).__name__}.")


def check_int(owner: str, name: str, value: Any, low: int = 1, none: bool = False) -> None:
    if none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"The {name!r} parameter of {owner} must be an int >= {low}; got {value!r}.")


class SearchPruner(Pruner):
    """Base of the search pruners: budget, scoring, history, best result, checkpoints."""

    default_granularity = "element"
    budget_over_layers = True

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, *,
                 target: str, pruning_algorithm: str, dummy_input: Any, seed: int | None,
                 max_evaluations: int | None, time_limit: float | None, executor: Executor | None,
                 checkpoint_dir: str | os.PathLike | None, progress: bool | None,
                 dense: tuple[int, int] | None = None) -> None:
        owner = type(self).__name__
        check_scorer(owner, evaluator)
        if target not in TARGETS:
            raise ValueError(f"The 'target' parameter of {owner} must be one of {list(TARGETS)}; got {target!r}.")
        if pruning_algorithm not in ALGORITHMS:
            raise ValueError(f"The 'pruning_algorithm' parameter of {owner} must be one of {sorted(ALGORITHMS)}; "
                             f"got {pruning_algorithm!r}.")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"The 'seed' parameter of {owner} must be an int or None; got {seed!r}.")
        check_int(owner, "max_evaluations", max_evaluations, none=True)
        if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                       or not time_limit > 0):
            raise ValueError(f"The 'time_limit' parameter of {owner} must be seconds > 0 or None; got {time_limit!r}.")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"The 'executor' parameter of {owner} must be a concurrent.futures.Executor (a "
                            f"ProcessPoolExecutor, Dask's client.get_executor() ...); got {type(executor).__name__}.")
        Progress(1, owner, progress)
        self.default_granularity, self._criterion = ALGORITHMS[pruning_algorithm]
        if dummy_input is None and isinstance(evaluator, Evaluator):
            dummy_input = evaluator.dummy_input
        super().__init__(model, config_list, dummy_input=dummy_input)
        ratios = {s.sparse_ratio for s in self.settings.values()}
        if None in ratios or any(s.sparse_threshold is not None for s in self.settings.values()):
            raise ValueError(f"{owner}: each config needs a 'sparse_ratio' (the budget the search meets); "
                             f"'sparse_threshold' is not searched.")
        if len(ratios) > 1:
            raise ValueError(f"{owner}: the search meets one budget over all selected layers, but the configs give "
                             f"different sparse_ratio values {sorted(ratios)}; give every config the same one.")
        self.evaluator = evaluator
        self.target, self.pruning_algorithm, self.seed = target, pruning_algorithm, seed
        self.max_evaluations, self.time_limit, self.executor = max_evaluations, time_limit, executor
        self.checkpoint_dir = check_checkpoint_dir(owner, checkpoint_dir)
        self.progress = progress
        self.ratio = ratios.pop()
        self.space = SearchSpace(self, target, self.ratio, dense)
        self.history: list[dict[str, Any]] = []
        self._best: tuple[list[int], float] | None = None
        self._evaluations = 0
        self._started = 0.0

    def score(self, target: Target, units: torch.Tensor) -> torch.Tensor:
        return self._criterion(units)

    def calculate_masks(self) -> Masks:
        """The best candidate's masks; before any search, those of the uniform allocation
        (every layer at the same ratio) fitted to the budget."""
        if self._best is not None:
            return self.space.masks(torch.tensor(self._best[0]))
        return self.space.masks(self.space.fit([self.ratio] * len(self.space.variables)))

    def _extra_state(self) -> dict[str, torch.Tensor]:
        """The best candidate's pruned count per variable, under its first tensor's name."""
        if self._best is None:
            return {}
        return {f"search/{slot.keys[0][0]}/{slot.keys[0][1]}": torch.tensor([c], dtype=torch.int64)
                for slot, c in zip(self.space.slots, self._best[0])}

    def _extra_state_kinds(self) -> tuple[str, ...]:
        return ("search",)

    def _load_extra_state(self, state) -> None:
        if not state:
            return
        keys = [f"search/{slot.keys[0][0]}/{slot.keys[0][1]}" for slot in self.space.slots]
        missing = [k for k in keys if k not in state]
        extra = sorted(set(state) - set(keys))
        if missing or extra:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the search counts do not fit this model's "
                             f"variables (missing {missing[:3]}, unknown {extra[:3]}).")
        counts = [int(state[k].reshape(-1)[0]) for k in keys]
        for v, c in zip(self.space.variables, counts):
            if not v.low <= c <= v.high:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {v.name}: {c} pruned units is outside "
                                 f"[{v.low}, {v.high}].")
        self._best = (counts, math.nan)

    # -- candidates -------------------------------------------------------------------
    def _base_model(self) -> nn.Module:
        net = copy.deepcopy(self.net)
        detach_masks(net, apply=False)
        return net

    def evaluate(self, candidates: list[torch.Tensor]) -> list[float]:
        """Score candidates (in parallel through ``executor`` when given), in order."""
        base = self._base_model()
        masks = [self.space.masks(c) for c in candidates]
        owner = type(self).__name__
        try:
            if self.executor is None:
                scores = [score_candidate(self.evaluator, copy.deepcopy(base), m) for m in masks]
            else:
                futures = [self.executor.submit(score_candidate, self.evaluator, base, m) for m in masks]
                scores = [f.result() for f in futures]
        except (TypeError, AttributeError) as err:
            if self.executor is not None and ("pickle" in str(err).lower() or "serial" in str(err).lower()):
                raise TypeError(f"{owner}: the executor could not send a candidate to its workers ({err}); the "
                                f"evaluator and the model must be picklable: define the evaluating function at "
                                f"module level, not inside another function.") from None
            raise
        for s in scores:
            if not math.isfinite(s):
                raise ValueError(f"{owner}: the evaluator returned {s} for a candidate; it must return a finite "
                                 f"number (higher is better).")
        self._evaluations += len(candidates)
        return scores

    def budget_left(self, asked: int = 1) -> int:
        """How many of ``asked`` evaluations the search may still run."""
        if self.time_limit is not None and time.monotonic() - self._started >= self.time_limit:
            return 0
        if self.max_evaluations is None:
            return asked
        return max(0, min(asked, self.max_evaluations - self._evaluations))

    def record(self, counts: torch.Tensor, score: float, **fields: Any) -> dict[str, Any]:
        entry = {"evaluation": len(self.history) + 1,
                 "sparsity": dict(zip((v.name for v in self.space.variables), self.space.ratios(counts))),
                 "counts": [int(c) for c in counts], "budget": self.space.reached(counts), "score": score, **fields}
        self.history.append(entry)
        if self._best is None or score > self._best[1]:
            self._best = ([int(c) for c in counts], score)
        return entry

    def _finish(self) -> tuple[nn.Module, Masks]:
        counts, _ = self._best
        self.masks = MaskDict(self.space.masks(torch.tensor(counts)))
        self.masks.trace = self.graph
        attach_masks(self.net, self.masks)
        return self.model, self.masks

    def get_best_result(self) -> tuple[Masks, float, dict[str, float]]:
        """(masks, score, per-tensor sparsity) of the best candidate the search scored.

        Raises:
            RuntimeError: before ``compress()``.
        """
        if self._best is None:
            raise RuntimeError(f"{type(self).__name__}.get_best_result: call compress() first.")
        counts, score = self._best
        masks = self.space.masks(torch.tensor(counts))
        return masks, score, realised(self.net, self.targets, masks)

    def save_history(self, path: str | os.PathLike) -> None:
        """Write ``history`` as JSON (one object per candidate)."""
        Path(path).write_text(json.dumps(self.history, indent=1))

    def plot_history(self, path: str | os.PathLike) -> None:
        """Write a PNG of each candidate's score against the evaluation number, best so far
        as a line (needs matplotlib)."""
        try:
            import matplotlib
        except ImportError:
            raise ImportError(f"{type(self).__name__}.plot_history needs matplotlib: pip install matplotlib") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [e["evaluation"] for e in self.history]
        scores = [e["score"] for e in self.history]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, scores, "o", ms=3, label="candidate")
        ax.plot(steps, np.maximum.accumulate(scores), "-", label="best so far")
        ax.set_xlabel("evaluation")
        ax.set_ylabel("score")
        ax.set_title(f"{type(self).__name__}: {self.target} {self.ratio:g}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)

    # -- checkpoints ------------------------------------------------------------------
    def fingerprint(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps({
            "pruner": self.registry_name, "config_list": self.config_list, "target": self.target,
            "pruning_algorithm": self.pruning_algorithm, "seed": self.seed, "arguments": arguments,
            "model": model_fingerprint(self.net), "ranking": self.space.digest()}))

    def save_state(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   fingerprint: dict[str, Any]) -> None:
        if self.checkpoint_dir is None:
            return
        save_checkpoint(self.checkpoint_dir, step, tensors, {
            "fingerprint": fingerprint, "history": self.history, "best": self._best,
            "evaluations": self._evaluations, "state": meta})
        prune_checkpoints(self.checkpoint_dir, keep=2)

    def load_state(self, fingerprint: dict[str, Any]) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        if self.checkpoint_dir is None:
            return None
        found = checkpoints(self.checkpoint_dir)
        if not found:
            return None
        step, path = found[-1]
        tensors, meta = read_checkpoint(type(self).__name__, self.checkpoint_dir, path, fingerprint)
        self.history = meta["history"]
        self._best = (list(meta["best"][0]), float(meta["best"][1])) if meta["best"] is not None else None
        self._evaluations = int(meta["evaluations"])
        return step, tensors, meta["state"]
