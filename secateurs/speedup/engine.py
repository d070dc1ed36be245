"""ModelSpeedup: turn channel masks into a physically smaller model that computes the same.

Steps (see :mod:`.plan`, :mod:`.apply`, :mod:`.verify`):

1. validate the arguments and masks; attach the given masks (with those attached) so the
   model computes what the user's masked model computes;
2. trace it once (:func:`secateurs.graph.trace_channels` with ``record_inputs``): the
   channel groups, the value each channel carries into each layer, and the reference
   output, which is the user's masked model's;
3. plan which groups go (only what removes exactly; the rest is kept and reported);
4. detach the masks and apply in place: each parameter is sliced, then its kept part is
   masked; parameters keep their identity (``p.data`` is replaced), buffers and
   module attributes follow (layer sizes, and the head counts, widths and ``split``
   sizes an attention module's forward computes with: see :func:`.apply.follow_sizes`),
   the optimizer's state is sliced with its parameters;
5. verify against the reference; on a difference beyond ``tolerance`` every change is
   undone (masks re-attached) and ``RuntimeError`` says how far apart they were.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .._gc import no_gc
from ..graph import ChannelGraph, call_with, example_signature, measure_inputs, plain_name, trace_channels
from ..layers import LAYERS
from ..masks import attach_masks, check_masks, detach_masks, get_masks
from ..targets import original_parameter
from . import config_sizes
from .apply import Undo, apply_plan
from .plan import plan_removal
from .verify import compare_outputs


@dataclass
class SpeedupReport:
    """What ModelSpeedup did.

    Attributes:
        removed: module name -> number of output channels removed.
        params_before / params_after: parameter counts.
        max_abs_diff / max_rel_diff: sped-up vs the user's masked model, largest
            difference over every output leaf (NaN when ``verify=False``).
        where: the output leaf with the largest difference.
        extended: producers that lost more channels than their own masks said, with why.
        kept: masked channels that stay, with why.
        folded: consumers whose bias took the constant of removed channels.
        not_shrunk: masked layers that could not be shrunk, with why.
        config: a Hugging Face config's size attributes that changed (the layers agree on
            them) and ``secateurs_sizes``, the per-layer values of those they do not agree on.
    """

    removed: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    max_abs_diff: float = math.nan
    max_rel_diff: float = math.nan
    where: str = ""
    extended: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    not_shrunk: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"parameters {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%}); largest output difference from the masked "
            f"model {self.max_abs_diff:.3g} absolute, {self.max_rel_diff:.3g} relative",
        ]
        lines += [f"removed {n} output channels of {m}" for m, n in self.removed.items()]
        for title, items in (("extended", self.extended), ("kept", self.kept), ("folded", self.folded),
                             ("not shrunk", self.not_shrunk)):
            lines += [f"{title}: {item}" for item in items]
        return "\n".join(lines)


def _check_args(model, dummy_input, tolerance, verify, prune_outputs, optimizer) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"ModelSpeedup: 'model' must be a torch.nn.Module; got {type(model).__name__}.")
    if dummy_input is None:
        raise ValueError("ModelSpeedup: 'dummy_input' is required: a tensor, a tuple of positional inputs or a dict "
                         "of keyword arguments the model accepts.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"ModelSpeedup: 'tolerance' must be a finite number >= 0; got {tolerance!r}.")
    for key, value in (("verify", verify), ("prune_outputs", prune_outputs)):
        if not isinstance(value, bool):
            raise TypeError(f"ModelSpeedup: {key!r} must be True or False; got {value!r}.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"ModelSpeedup: 'optimizer' must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")


def _attach_given(model: nn.Module, masks: Mapping, undo: Undo) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Make the model compute with every mask (attached ones AND given ones) for the trace;
    the undo log puts back exactly the masks that were attached.

    Returns:
        id of each masked parameter -> (parameter, mask).
    """
    attached = {n: dict(t) for n, t in get_masks(model).items()}
    combined = {n: dict(t) for n, t in attached.items()}
    for name, targets in masks.items():
        for target, mask in targets.items():
            old = combined.setdefault(name, {}).get(target)
            if old is None or (old is not mask and not torch.equal(old, mask)):
                combined[name][target] = mask if old is None else old & mask

    def restore() -> None:
        detach_masks(model, apply=False)
        attach_masks(model, attached)

    undo.add(restore)
    if any(t not in attached.get(n, {}) or attached[n][t] is not m for n, ts in combined.items() for t, m in ts.items()):
        attach_masks(model, combined)
    modules = dict(model.named_modules())
    return {id(p): (p, m) for n, ts in combined.items() for t, m in ts.items()
            for p in [original_parameter(modules[n], t)]}


class ModelSpeedup:
    """Shrink a masked model in place so that it computes what the masked model computes.

    Only what can be removed exactly is removed: channels whose masks leave a value that
    still reaches another layer (a partial mask of a channel group, a BatchNorm shift
    in front of a padded convolution) are kept, named in ``report.kept`` and in one
    warning. Pruning with ``dummy_input=...`` gives masks that cover whole groups.

    Args:
        model: the model; masks may be attached to it (from ``compress()``) or given.
        dummy_input: example inputs: a tensor, a tuple of positional inputs, or a dict of
            keyword arguments.
        masks: masks in the secateurs format; None takes the masks attached to ``model``.
        tolerance: largest relative output difference accepted by the verification.
        verify: compare outputs after shrinking (recommended).
        prune_outputs: also remove masked output channels of layers whose output is a
            model output (the output shape then changes). By default they are kept, with
            their weights zero, and listed in ``report.kept``.
        optimizer: an optimizer over the model's parameters: its per-parameter state
            (momentum, Adam moments) is sliced with the parameters, so training goes on.

    Parameters keep their identity: a parameter object that shrinks is the same object
    afterwards (its ``.data`` is replaced), so optimizers and references stay valid.

    Example:
        >>> import torch, torch.nn as nn
        >>> from secateurs import L1NormPruner
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> x = torch.randn(2, 3, 9, 9)
        >>> _, masks = L1NormPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], dummy_input=x).compress()
        >>> ModelSpeedup(model, x, masks).speedup_model()[0].out_channels
        4
    """

    def __init__(self, model: nn.Module, dummy_input: Any, masks: Mapping | None = None,
                 tolerance: float = 1e-4, verify: bool = True, prune_outputs: bool = False,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        _check_args(model, dummy_input, tolerance, verify, prune_outputs, optimizer)
        self.model = model
        self.dummy_input = dummy_input
        self.masks = check_masks(model, get_masks(model) if masks is None else masks)
        self._trace = getattr(masks, "trace", None)  # the pruner's, if the masks came from compress()
        self.tolerance = float(tolerance)
        self.verify = verify
        self.prune_outputs = prune_outputs
        self.optimizer = optimizer
        self.report = SpeedupReport()

    def speedup_model(self) -> nn.Module:
        """Shrink the model in place and return it; see the module docstring for the steps.

        Raises:
            TypeError: the model's output holds objects that cannot be compared.
            RuntimeError: the shrunk model's output differs from the masked model's by more
                than ``tolerance`` (relative); the model is then left as it was.
        """
        model, report = self.model, self.report
        report.params_before = sum(p.numel() for p in model.parameters())
        undo = Undo()
        with no_gc():
            try:
                self._shrink(undo)
            except BaseException as e:
                undo.run()
                if isinstance(e, _Mismatch):
                    raise RuntimeError(str(e)) from None
                raise
        report.params_after = sum(p.numel() for p in model.parameters())
        lines = report.kept + report.not_shrunk
        if lines:
            shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
            warnings.warn(f"ModelSpeedup kept some masked channels (see report.kept / report.not_shrunk): {shown}",
                          stacklevel=2)
        return model


    def _shrink(self, undo: Undo) -> None:
        """Steps 1-5 of the module docstring; every change to the model is logged in ``undo``."""
        model, report = self.model, self.report
        before = config_sizes.snapshot(model)
        masked = _attach_given(model, self.masks, undo)
        graph = self._reusable_trace(model)
        if graph is not None:
            graph.input_stats, graph.output = measure_inputs(model, self.dummy_input)
        else:
            free = list(self.masks) if self.prune_outputs else ()
            graph = trace_channels(model, self.dummy_input, record_inputs=True, free_outputs=free)
        plan = plan_removal(model, graph, masked)
        detach_masks(model, apply=False)  # the masked values are written as the tensors are sliced
        report.kept, report.extended, report.not_shrunk = plan.kept, plan.extended, plan.not_shrunk
        report.folded = [f"{f.module}: bias took the constant of {f.channels} removed input channel(s)"
                         for f in plan.folds]
        report.removed = apply_plan(model, graph, plan, undo, masked, self.optimizer)
        self._update_config(before, undo)
        if not self.verify:
            return
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with torch.no_grad():
                out = call_with(model, self.dummy_input)
        except Exception as e:
            raise _Mismatch(
                f"ModelSpeedup: the shrunk model's forward failed ({type(e).__name__}: {e}); the model was left "
                "unchanged. A size it computes with did not follow pruning (a number written in its code, or an "
                "attribute of another module or of its config); exclude the layers involved from pruning."
            ) from e
        finally:
            for m, mode in modes.items():
                m.training = mode
        reference = _kept_outputs(graph, plan.removed) if self.prune_outputs else graph.output
        report.max_abs_diff, report.max_rel_diff, report.where = compare_outputs(out, reference)
        if not report.max_rel_diff <= self.tolerance:
            raise _Mismatch(
                f"ModelSpeedup: the shrunk model differs from the masked model by {report.max_rel_diff:.3g} "
                f"(relative, at {report.where}; tolerance {self.tolerance}); the model was left unchanged. "
                "Some op outside the known layers consumes the removed channels; prune with dummy_input=... "
                f"or exclude the layers named below.\n{report}"
            )


    def _update_config(self, before: dict | None, undo: Undo) -> None:
        """A Hugging Face config's size attributes follow the layers (verified with them)."""
        config = getattr(self.model, "config", None)
        if before is None or config is None:
            return
        old = dict(vars(config))
        undo.add(lambda: (vars(config).clear(), vars(config).update(old)))
        self.report.config = config_sizes.update_config(self.model, before)

    def _reusable_trace(self, model: nn.Module) -> ChannelGraph | None:
        """A copy of the pruner's channel graph when it still describes this model and this
        example input exactly as a new trace would; else None (trace again).

        Only graphs whose every layer ran as one step are reused, so that the input
        statistics a plain forward measures are the ones a trace would record."""
        graph = self._trace
        if graph is None or self.prune_outputs or graph.free_outputs:
            return None
        if graph.example != example_signature(self.dummy_input):
            return None
        modules = dict(model.named_modules())
        for name, use in graph.modules.items():
            family = LAYERS.family_of(modules[name]) if name in modules else None
            if not use.plain or family is None or family.name != use.family or not family.is_plain(modules[name]):
                return None
        tensors = {plain_name(n): t for n, t in list(model.named_parameters()) + list(model.named_buffers())}
        for fqn, dims in graph.tensors.items():
            t = tensors.get(fqn)
            if t is None or any(d >= t.dim() or t.shape[d] != ids.numel() for d, ids in dims.items()):
                return None
        return dataclasses.replace(graph, tensors=dict(graph.tensors))


class _Mismatch(Exception):
    pass


def _kept_outputs(graph, removed: torch.Tensor) -> Any:
    """The reference output with the removed positions of pruned output layers dropped."""
    sliced = {}
    for path, dims in graph.output_ids.items():
        index = {d: (~removed[graph.component[ids]]).nonzero().flatten() for d, ids in dims.items()}
        sliced[path] = {d: i for d, i in index.items() if i.numel() != dims[d].numel()}
    return _rebuild(graph.output, "output", sliced)


def _rebuild(obj: Any, path: str, sliced: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        for d, index in sliced.get(path, {}).items():
            obj = obj.index_select(d, index.to(obj.device))
        return obj
    if isinstance(obj, Mapping):
        return {k: _rebuild(v, f"{path}[{k!r}]", sliced) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _rebuild(getattr(obj, f.name), f"{path}.{f.name}", sliced)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, (list, tuple)):
        items = [_rebuild(v, f"{path}[{i}]", sliced) for i, v in enumerate(obj)]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj
