"""Sensitivity analysis: how much the score drops when one layer alone is pruned.

For every selected layer and every ratio, a copy of the model has only that layer pruned
(by a one-shot pruner) and is scored by the user's ``evaluate``. The table of scores shows
which layers tolerate pruning; :meth:`SensitivityResult.suggest` turns it into a
``config_list`` under a largest allowed drop. NNI 2.x had this as ``SensitivityAnalysis``.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._errors import did_you_mean
from .._progress import Progress
from .._registry import PRUNERS

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# A drop within this (times max(1, |baseline|)) of max_drop counts as within it, so that
# 0.98 - 0.97 is a drop of 0.01 and not 0.010000000000000009.
_DROP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SensitivityResult:
    """Scores of the model with one layer at a time pruned to each ratio.

    Attributes:
        baseline: ``evaluate`` of the dense model.
        ratios: the sparse ratios tried, increasing.
        layers: the layers analysed (fully qualified names), in model order.
        scores: layer -> one score per ratio, in the order of ``ratios``.
        pruner: the registry name of the pruner used.
    """

    baseline: float
    ratios: tuple[float, ...]
    layers: tuple[str, ...]
    scores: dict[str, tuple[float, ...]]
    pruner: str

    def _index(self, ratio: float) -> int:
        for i, r in enumerate(self.ratios):
            if math.isclose(r, ratio, rel_tol=0.0, abs_tol=1e-12):
                return i
        raise ValueError(f"ratio {ratio!r} was not analysed; the ratios are {list(self.ratios)}.")

    def drop(self, layer: str, ratio: float) -> float:
        """``baseline - score`` of ``layer`` pruned to ``ratio`` (positive = worse than dense).

        Raises:
            KeyError: ``layer`` was not analysed (close matches are named).
            ValueError: ``ratio`` is not one of :attr:`ratios`.
        """
        if layer not in self.scores:
            raise KeyError(f"layer {layer!r} was not analysed{did_you_mean(layer, self.layers)}; "
                           f"the layers are {list(self.layers)}.")
        return self.baseline - self.scores[layer][self._index(ratio)]

    def suggest(self, max_drop: float) -> list[dict[str, Any]]:
        """A ``config_list`` that prunes each layer as far as the analysis says it tolerates.

        Per layer, the ratio is the largest one whose drop (``baseline - score``) is at most
        ``max_drop`` *and* such that every smaller ratio is within ``max_drop`` too (the
        first ratio past the limit ends the layer's walk, even when a larger ratio happens
        to score better). A layer whose smallest ratio already drops too much is left out.
        Layers with the same ratio share one entry (``op_names`` sorted); entries are in
        increasing ratio. Drops are compared with a tolerance of 1e-9 times
        ``max(1, |baseline|)``, so float rounding does not decide.

        Each layer's drop was measured with that layer alone pruned; pruning them together
        usually drops more than any one of them, so check the combined model.

        Returns:
            ``[{"op_names": [...], "sparse_ratio": r}, ...]``; empty when no layer qualifies.

        Raises:
            TypeError / ValueError: ``max_drop`` is not a finite number >= 0.
        """
        if not _is_number(max_drop):
            raise TypeError(f"The 'max_drop' parameter of suggest must be a number; got {max_drop!r}.")
        if not math.isfinite(max_drop) or max_drop < 0:
            raise ValueError(f"The 'max_drop' parameter of suggest must be a finite number >= 0; got {max_drop!r}.")
        limit = max_drop + _DROP_TOLERANCE * max(1.0, abs(self.baseline))
        by_ratio: dict[float, list[str]] = {}
        for layer in self.layers:
            chosen = None
            for ratio, score in zip(self.ratios, self.scores[layer]):
                if self.baseline - score > limit:
                    break
                chosen = ratio
            if chosen is not None:
                by_ratio.setdefault(chosen, []).append(layer)
        return [{"op_names": sorted(names), "sparse_ratio": ratio} for ratio, names in sorted(by_ratio.items())]

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON types."""
        return {"pruner": self.pruner, "baseline": self.baseline, "ratios": list(self.ratios),
                "layers": list(self.layers), "scores": {layer: list(self.scores[layer]) for layer in self.layers}}

    def to_markdown(self) -> str:
        """A table: one row per layer, one column per ratio, each cell the score."""
        header = ["layer"] + [f"{r:g}" for r in self.ratios]
        lines = [f"Sensitivity to {self.pruner} pruning: the score with only that layer pruned to each ratio.", "",
                 f"baseline (dense model): {self.baseline:.6g}", "",
                 "| " + " | ".join(header) + " |", "|---|" + "---:|" * len(self.ratios)]
        lines += ["| " + " | ".join([f"`{layer}`", *(f"{s:.6g}" for s in self.scores[layer])]) + " |"
                  for layer in self.layers]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def plot(self, path: str | Path) -> Path:
        """Write a PNG to ``path``: score against ratio, one line per layer, the baseline
        dashed. Needs matplotlib (drawn with its Agg canvas; pyplot's state is not touched).

        Returns:
            the path written.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("SensitivityResult.plot needs matplotlib (pip install matplotlib).") from None
        path = Path(path)
        fig = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for layer in self.layers:
            ax.plot(self.ratios, self.scores[layer], marker="o", markersize=3, label=layer)
        ax.axhline(self.baseline, linestyle="--", color="black", linewidth=1, label="baseline")
        ax.set_xlabel("sparse ratio of the one pruned layer")
        ax.set_ylabel("score")
        ax.set_title(f"sensitivity to {self.pruner} pruning")
        if len(self.layers) <= 20:
            ax.legend(fontsize="small", loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        return path


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def one_shot_pruners() -> list[str]:
    """Registry names of the pruners that need nothing but ``model`` and ``config_list``."""
    return [name for name in PRUNERS if _is_one_shot(PRUNERS.get(name))]


def _is_one_shot(cls: type) -> bool:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    if [p.name for p in params[:2]] != ["model", "config_list"]:
        return False
    return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in params[2:])


def check_pruner(pruner: Any) -> type:
    """The class of a one-shot pruner named ``pruner``.

    Raises:
        TypeError: ``pruner`` is not a string.
        KeyError: no pruner has that name (close matches are named).
        ValueError: the pruner needs an evaluator, training or a wrapped pruner.
    """
    if not isinstance(pruner, str):
        raise TypeError(f"The 'pruner' parameter of sensitivity must be a pruner name such as 'l1norm'; "
                        f"got {type(pruner).__name__} {pruner!r}.")
    cls = PRUNERS.get(pruner)
    if not _is_one_shot(cls):
        raise ValueError(f"The 'pruner' parameter of sensitivity must be a one-shot pruner "
                         f"({', '.join(one_shot_pruners())}); {pruner!r} ({cls.__name__}) needs more than "
                         "model and config_list (an evaluator, training or a wrapped pruner).")
    return cls


def check_ratios(ratios: Any) -> tuple[float, ...]:
    """``ratios`` as a tuple of floats, each in (0, 1), strictly increasing.

    Raises:
        TypeError / ValueError: naming the 'ratios' parameter and the value.
    """
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence):
        raise TypeError(f"The 'ratios' parameter of sensitivity must be a sequence of numbers; got {ratios!r}.")
    if not ratios:
        raise ValueError("The 'ratios' parameter of sensitivity is empty; give at least one ratio in (0, 1).")
    for r in ratios:
        if not _is_number(r):
            raise TypeError(f"The 'ratios' parameter of sensitivity must hold numbers; got {r!r} in {list(ratios)}.")
        if not 0 < r < 1:
            raise ValueError(f"The 'ratios' parameter of sensitivity must hold ratios in (0, 1); "
                             f"got {r!r} in {list(ratios)}.")
    if any(b <= a for a, b in zip(ratios, ratios[1:])):
        raise ValueError(f"The 'ratios' parameter of sensitivity must be strictly increasing (sorted, no "
                         f"duplicates); got {list(ratios)}.")
    return tuple(float(r) for r in ratios)


def _check_names(value: Any, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"The {key!r} parameter of sensitivity must be a list of strings; got {value!r}.")
    if not value:
        raise ValueError(f"The {key!r} parameter of sensitivity is empty; give at least one name or leave it None.")
    return tuple(value)


def _select_layers(model: nn.Module, cls: type, op_types: tuple[str, ...] | None,
                   op_names: tuple[str, ...] | None, dummy_input: Any) -> list[str]:
    from ..targets import select_modules

    cfg: dict[str, Any] = {}
    if op_types is not None:
        cfg["op_types"] = op_types
    if op_names is not None:
        cfg["op_names"] = op_names
    if not cfg:
        cfg["op_types"] = ("default",)
    try:
        names = list(select_modules(model, cfg, 0, cls.default_op_types))
    except ValueError as err:
        text = str(err).removeprefix("config_list[0]: ")
        if text.startswith("selects no module"):
            types = list(op_types) if op_types is not None else list(cls.default_op_types)
            text = f"no layer selected: {type(model).__name__} has no module of the types {types}" + \
                (f" named in op_names {list(op_names)}" if op_names is not None else "") + "."
        raise ValueError(f"sensitivity: {text}") from None
    if dummy_input is not None and op_names is None:
        # As the pruners do: a layer whose output is the model's output is pruned only when
        # op_names names it, so a selection by type leaves it out.
        outputs = _output_layers(model, dummy_input)
        names = [n for n in names if n not in outputs]
        if not names:
            raise ValueError(f"sensitivity: no layer selected: every layer of the types selected produces a model "
                             f"output ({', '.join(sorted(outputs))}); name such a layer in op_names to analyse it.")
    return names


def _output_layers(model: nn.Module, dummy_input: Any) -> set[str]:
    from ..graph import trace_channels

    graph = trace_channels(copy.deepcopy(model), dummy_input, warn=False)
    return {name for name, use in graph.modules.items() if use.out_ids is not None
            and not bool(graph.prunable(use.out_ids).any()) and "model output" in graph.why_fixed(use.out_ids)}


def _score(evaluate: Callable[[nn.Module], Any], model: nn.Module, what: str) -> float:
    value = evaluate(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not _is_number(value):
        raise TypeError(f"The 'evaluate' function of sensitivity must return a number; got "
                        f"{type(value).__name__} {value!r} for {what}.")
    if not math.isfinite(value):
        raise ValueError(f"The 'evaluate' function of sensitivity must return a finite number; got {value!r} "
                         f"for {what}.")
    return float(value) + 0.0  # -0.0 (minus a zero loss) reads as 0 in the tables


def _prune_one(cls: type, model: nn.Module, layer: str, ratio: float, dummy_input: Any) -> Any:
    return cls(model, [{"op_names": [layer], "sparse_ratio": ratio}], dummy_input=dummy_input)


def sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    pruner: str = "l1norm",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    op_types: Sequence[str] | None = None,
    op_names: Sequence[str] | None = None,
    dummy_input: Any = None,
    progress: bool | None = None,
) -> SensitivityResult:
    """Score the model with each selected layer alone pruned to each ratio.

    For every layer and ratio, a deep copy of ``model`` gets
    ``PRUNERS.get(pruner)(copy, [{"op_names": [layer], "sparse_ratio": ratio}],
    dummy_input=dummy_input).compress()`` and ``evaluate(copy)`` scores it; the baseline is
    ``evaluate`` of an unpruned copy. ``model`` itself is neither modified nor given to
    ``evaluate``: its parameters, buffers and masks are as they were.

    Args:
        model: the model to analyse (not modified).
        evaluate: ``evaluate(model) -> float``, higher is better (accuracy, or minus a loss).
            It gets a masked copy; a one-element tensor is read as its number.
        pruner: the registry name of a one-shot pruner: ``"level"``, ``"l1norm"``,
            ``"l2norm"`` or ``"fpgm"``.
        ratios: the sparse ratios to try, each in (0, 1), strictly increasing.
        op_types: class names of the layers to analyse; default: the pruner's default op
            types (``{"op_types": ["default"]}``), such as Conv and Linear layers.
        op_names: names of the layers to analyse; with ``op_types``, a layer must match both.
        dummy_input: an example input. With it, the pruner traces the model and masks every
            tensor a removed channel touches (the norm layer after it, the next layer's input
            columns), so each score is that of the really pruned model; recommended for models
            with BatchNorm. A layer whose output is a model output (the classifier) is then
            analysed only when ``op_names`` names it, as the pruners do.
        progress: show one progress line on stderr: True, False, or None (only on a terminal).

    Returns:
        a :class:`SensitivityResult`.

    Raises:
        TypeError / ValueError: a bad argument (the message names it), a pruner that is not
            one-shot, no layer selected, a layer the pruner cannot prune, or ``evaluate``
            returning something other than a finite number.
        KeyError: an unknown pruner name.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> kept = lambda m: m[0].weight.ne(0).float().mean().item()  # fraction of layer 0 kept
        >>> result = sensitivity(net, kept, ratios=[0.5])
        >>> result.baseline, result.scores
        (1.0, {'0': (0.5,), '2': (1.0,)})
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' parameter of sensitivity must be a torch.nn.Module; got {type(model).__name__}.")
    if not callable(evaluate):
        raise TypeError(f"The 'evaluate' parameter of sensitivity must be a function model -> float; "
                        f"got {type(evaluate).__name__} {evaluate!r}.")
    cls = check_pruner(pruner)
    ratios = check_ratios(ratios)
    op_types, op_names = _check_names(op_types, "op_types"), _check_names(op_names, "op_names")
    bar = Progress(0, "sensitivity", progress, noun="evaluation")  # validates ``progress`` before any work
    layers = _select_layers(model, cls, op_types, op_names, dummy_input)
    probe = copy.deepcopy(model)
    for layer in layers:  # refuse a layer the pruner cannot prune before any evaluation
        try:
            _prune_one(cls, probe, layer, ratios[0], dummy_input)
        except (ValueError, TypeError) as err:
            raise type(err)(f"sensitivity: {cls.__name__} cannot prune layer {layer!r}: {err} "
                            "Leave it out with op_names or op_types.") from None
    del probe
    baseline = _score(evaluate, copy.deepcopy(model), "the dense model")
    bar = Progress(len(layers) * len(ratios), "sensitivity", progress, noun="evaluation")
    scores: dict[str, tuple[float, ...]] = {}
    done = 0
    try:
        for layer in layers:
            row = []
            for ratio in ratios:
                pruned = copy.deepcopy(model)
                _prune_one(cls, pruned, layer, ratio, dummy_input).compress()
                row.append(_score(evaluate, pruned, f"layer {layer!r} at ratio {ratio:g}"))
                del pruned
                done += 1
                bar.update(done, layer=layer, ratio=ratio, score=row[-1])
            scores[layer] = tuple(row)
    finally:
        bar.close()
    return SensitivityResult(baseline=baseline, ratios=ratios, layers=tuple(layers), scores=scores,
                             pruner=cls.registry_name)


__all__ = ["DEFAULT_RATIOS", "SensitivityResult", "check_pruner", "check_ratios", "one_shot_pruners", "sensitivity"]
