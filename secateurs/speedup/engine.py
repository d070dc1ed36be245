"""ModelSpeedup: turn channel masks into a physically smaller model that computes the same.

Steps (nothing of the user's model changes until the last one):

1. plan: trace the model (:mod:`secateurs.graph`) and find, for every channel variable
   component, whether the masks remove it: a component goes when one of its producers
   (a conv, linear or embedding whose weight makes the channel) has the channel wholly
   masked. Masks that cover only part of a component (some producers of the channel
   not masked) are extended over it: every parameter the channel touches is zeroed,
   as a dependency-aware pruner's masks would (reported).
2. validate: masks are checked against the model; components that are fixed (model
   output, input, ops that are not understood) keep their channels, and the report says
   why.
3. apply, on a copy: masks are applied to the weights, extended groups are zeroed, one
   forward pass records the reference output and the value each removed
   channel carries into its consumers; if that value is a non-zero constant it is folded
   into the consumer's bias (exact for Linear and for unpadded convolutions; reported
   otherwise); then every parameter and buffer is sliced and module attributes updated.
4. verify: the copy's output is compared with the reference; on success the new
   parameters and attributes move into the user's modules (in place); on failure a
   ``RuntimeError`` says how far apart they were and the user's model is unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from ..graph.trace import _CONV, _CONVT, ChannelGraph, call_with, trace_channels
from ..masks import check_masks, detach_masks, get_masks

_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "num_channels",
          "num_groups", "normalized_shape", "embedding_dim", "num_parameters")


@dataclass
class SpeedupReport:
    """What ModelSpeedup did.

    Attributes:
        removed: module name -> number of output channels removed.
        params_before / params_after: parameter counts.
        max_abs_diff / max_rel_diff: sped-up vs masked output, largest difference.
        extended: groups whose masks were extended, as readable lines.
        kept: channels that are wholly masked but stay (fixed components), with why.
        folded: consumers whose bias took the constant of removed channels.
        inexact: consumers where such a constant could not be folded exactly.
    """

    removed: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    extended: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"parameters {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%}); largest output difference "
            f"{self.max_abs_diff:.3g} absolute, {self.max_rel_diff:.3g} relative",
        ]
        lines += [f"removed {n} output channels of {m}" for m, n in self.removed.items()]
        for title, items in (("extended", self.extended), ("kept", self.kept), ("folded", self.folded),
                             ("not exact", self.inexact)):
            lines += [f"{title}: {item}" for item in items]
        return "\n".join(lines)


def _producers(graph: ChannelGraph, model: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
    """(module name, out dim of its weight, out ids) for every module that creates channels."""
    out = []
    for name, use in graph.modules.items():
        module = model.get_submodule(name)
        if use.out_ids is None or not hasattr(module, "weight"):
            continue
        if isinstance(module, (*_CONV, *_CONVT, nn.Linear)):
            out.append((name, 1 if isinstance(module, _CONVT) else 0, use.out_ids))
        elif isinstance(module, nn.Embedding):
            out.append((name, 1, use.out_ids))
    return out


def _channel_zero(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Per index along ``dim``: is the whole slice masked?"""
    return ~mask.movedim(dim, 0).reshape(mask.shape[dim], -1).any(1)


def plan_removal(model: nn.Module, graph: ChannelGraph, masks: Mapping[str, Mapping[str, torch.Tensor]],
                 report: SpeedupReport) -> tuple[torch.Tensor, torch.Tensor]:
    """Per component: (removed, extended). Fills ``report.extended`` and ``report.kept``.

    A component is removed when a producer has its channel wholly masked. It is
    *extended* when some other producer of it was not masked there: the user's masks
    covered only part of the group.
    """
    n_comp = graph.fixed.numel()
    wanted = torch.zeros(n_comp, dtype=torch.bool)
    uncovered = torch.zeros(n_comp, dtype=torch.bool)
    zeros = []
    producers = _producers(graph, model)
    for name, dim, ids in producers:
        mask = masks.get(name, {}).get("weight")
        zero = _channel_zero(mask, dim) if mask is not None else torch.zeros(ids.numel(), dtype=torch.bool)
        zeros.append(zero)
        wanted[graph.component[ids][zero]] = True
    for name, use in graph.modules.items():
        # A norm layer with scale and shift both masked outputs zero: its channel is gone
        # (Network Slimming's masks), whatever produced it.
        targets = masks.get(name, {})
        if use.out_ids is not None and "weight" in targets and "bias" in targets and targets["weight"].dim() == 1:
            silent = ~targets["weight"] & ~targets["bias"]
            wanted[graph.component[use.out_ids][silent]] = True
    for (_, _, ids), zero in zip(producers, zeros):
        uncovered[graph.component[ids][~zero]] = True
    for c in (wanted & graph.fixed).nonzero().flatten().tolist()[:20]:
        report.kept.append(f"channel group {c}: {graph.reasons.get(c, 'fixed')}")
    removed = wanted & ~graph.fixed
    extended = removed & uncovered
    for (name, _, ids), zero in zip(producers, zeros):
        extra = int((extended[graph.component[ids]] & ~zero).sum())
        if extra:
            report.extended.append(f"{name}: {extra} more output channel(s) removed with their group")
    return removed, extended


def _slice(t: torch.Tensor, dims: Mapping[int, torch.Tensor], keep_of) -> torch.Tensor:
    for d, ids in dims.items():
        keep = keep_of(ids)
        if not bool(keep.all()):
            t = t.index_select(d, keep.nonzero().flatten().to(t.device))
    return t


def _update_attrs(module: nn.Module) -> None:
    w = getattr(module, "weight", None)
    if isinstance(module, (*_CONV, *_CONVT)):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        if isinstance(module, _CONVT):
            c_in, c_out = w.shape[0], w.shape[1] * module.groups
            if depthwise:
                c_out = c_in
        else:
            c_out, c_in = w.shape[0], w.shape[1] * module.groups
            if depthwise:
                c_in = c_out
        if depthwise:
            module.groups = c_out
        module.in_channels, module.out_channels = c_in, c_out
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, (nn.modules.batchnorm._NormBase,)):
        ref = w if w is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.GroupNorm):
        per = module.num_channels // module.num_groups
        module.num_channels = w.shape[0] if w is not None else module.num_channels
        module.num_groups = module.num_channels // per
    elif isinstance(module, nn.PReLU):
        module.num_parameters = w.shape[0]
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = w.shape[1]


def _input_stats(model: nn.Module, names: list[str], example: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Per-channel (min, max, mean) of the inputs of the named layers, and the output."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            x = args[0]
            cdim = x.dim() - 1 if isinstance(module, nn.Linear) else x.dim() - module.weight.dim() + 1
            per = x.movedim(cdim, 0).reshape(x.shape[cdim], -1)
            stats = torch.stack([per.amin(1), per.amax(1), per.mean(1)])
            prev = seen.get(name)
            if prev is not None:
                stats = torch.stack([torch.minimum(prev[0], stats[0]), torch.maximum(prev[1], stats[1]), prev[2]])
            seen[name] = stats

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            output = call_with(model, example)
    finally:
        for h in handles:
            h.remove()
    return seen, output


def _fold_constants(model: nn.Module, graph: ChannelGraph, removed: torch.Tensor,
                    stats: Mapping[str, torch.Tensor], report: SpeedupReport) -> None:
    """Fold the constant that removed input channels carry into each consumer's bias."""
    for name, use in graph.modules.items():
        module = model.get_submodule(name)
        if use.in_ids is None or not isinstance(module, (*_CONV, nn.Linear)) or name not in stats:
            continue
        gone = removed[graph.component[use.in_ids]]
        if not bool(gone.any()):
            continue
        lo, hi, mean = stats[name][:, gone.to(stats[name].device)]
        scale = torch.maximum(lo.abs(), hi.abs())
        if float(scale.max()) <= 1e-12:
            continue  # removed channels carry zeros: nothing to fold
        varies = (hi - lo) > 1e-6 * (1 + scale)
        w = module.weight.detach()
        idx = gone.nonzero().flatten().to(w.device)
        exact = not bool(varies.any())
        if isinstance(module, _CONV):
            if module.groups != 1:
                exact = False
            elif any(p != 0 for p in module.padding if isinstance(module.padding, tuple)) or module.padding == "same":
                exact = exact and module.padding_mode != "zeros"
            contribution = (w.index_select(1, idx).sum(dim=tuple(range(2, w.dim()))) * mean.to(w)).sum(1)
        else:
            contribution = w.index_select(1, idx) @ mean.to(w)
        if not exact:
            report.inexact.append(
                f"{name}: {len(idx)} removed input channel(s) carry a non-zero value that cannot be folded exactly "
                "(padding, grouped convolution or a value that varies)"
            )
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        with torch.no_grad():
            module.bias.add_(contribution)
        report.folded.append(f"{name}: bias took the constant of {len(idx)} removed input channel(s)")


def _max_diff(a: Any, b: Any) -> tuple[float, float]:
    fa, fb = tree_flatten(a)[0], tree_flatten(b)[0]
    worst_abs = worst_rel = 0.0
    for x, y in zip(fa, fb):
        if not isinstance(x, torch.Tensor):
            continue
        if x.shape != y.shape:
            return float("inf"), float("inf")
        if not x.is_floating_point():
            worst_abs = max(worst_abs, float((x != y).any()))
            continue
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(y.abs().max()), 1e-12) if y.numel() else 0.0)
    return worst_abs, worst_rel


def _kept_outputs(reference: Any, out: Any, graph: ChannelGraph, removed: torch.Tensor) -> Any:
    """The reference outputs restricted to the positions that remain after pruning them."""
    if not isinstance(reference, torch.Tensor) or not isinstance(out, torch.Tensor) or reference.shape == out.shape:
        return reference
    for use in graph.modules.values():
        if use.out_ids is None or use.out_ids.numel() != reference.shape[-1]:
            continue
        keep = ~removed[graph.component[use.out_ids]]
        if int(keep.sum()) == out.shape[-1]:
            return reference[..., keep.to(reference.device)]
    return reference


class ModelSpeedup:
    """Shrink a masked model in place so that it computes what the masked model computes.

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
                 tolerance: float = 1e-4, verify: bool = True, prune_outputs: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModelSpeedup: model must be a torch.nn.Module; got {type(model).__name__}.")
        self.model = model
        self.dummy_input = dummy_input
        self.masks = check_masks(model, get_masks(model) if masks is None else masks)
        self.tolerance = tolerance
        self.verify = verify
        self.prune_outputs = prune_outputs
        self.report = SpeedupReport()

    def speedup_model(self) -> nn.Module:
        """Shrink the model in place and return it; see the module docstring for the steps.

        Raises:
            RuntimeError: the shrunk model's output differs from the masked model's by more
                than ``tolerance`` (relative); the model is then left as it was.
        """
        report = self.report
        report.params_before = sum(p.numel() for p in self.model.parameters())
        work = copy.deepcopy(self.model)
        detach_masks(work, apply=True)
        for name, targets in self.masks.items():  # masks given, not attached: apply them too
            module = work.get_submodule(name)
            with torch.no_grad():
                for target, mask in targets.items():
                    getattr(module, target).mul_(mask.to(getattr(module, target).dtype))
        free = list(self.masks) if self.prune_outputs else ()
        graph = trace_channels(work, self.dummy_input, record_inputs=True, free_outputs=free)
        removed, extended = plan_removal(work, graph, self.masks, report)
        modes = {m: m.training for m in work.modules()}
        work.eval()
        with torch.no_grad():
            # A group the masks covered only in part: zero every parameter it touches, as
            # the masks of a dependency-aware pruner would have.
            for fqn, dims in graph.tensors.items():
                owner, _, attr = fqn.rpartition(".")
                tensor = getattr(work.get_submodule(owner), attr)
                if not isinstance(tensor, nn.Parameter):
                    continue
                for d, ids in dims.items():
                    hit = extended[graph.component[ids]]
                    if bool(hit.any()):
                        tensor.index_fill_(d, hit.nonzero().flatten().to(tensor.device), 0)
            for name, _, ids in _producers(graph, work):
                gone = int(removed[graph.component[ids]].sum())
                if gone:
                    report.removed[name] = gone
        stats, reference = graph.input_stats, graph.output
        if bool(extended.any()):  # zeroing changed the model: measure it again
            stats, reference = _input_stats(work, list(stats), self.dummy_input)
        _fold_constants(work, graph, removed, stats, report)
        keep_of = lambda ids: ~removed[graph.component[ids]]  # noqa: E731
        touched: set[str] = set()
        for fqn, dims in graph.tensors.items():
            owner, _, attr = fqn.rpartition(".")
            module = work.get_submodule(owner)
            old = getattr(module, attr)
            new = _slice(old.detach(), dims, keep_of)
            if new.shape == old.shape:
                continue
            touched.add(owner)
            if isinstance(old, nn.Parameter):
                setattr(module, attr, nn.Parameter(new.clone(), requires_grad=old.requires_grad))
            else:
                module._buffers[attr] = new.clone()
        for owner in touched:
            _update_attrs(work.get_submodule(owner))
        with torch.no_grad():
            out = call_with(work, self.dummy_input)
        for m, mode in modes.items():
            m.training = mode
        if self.prune_outputs:  # the output shrank with its layer: compare the kept part
            reference = _kept_outputs(reference, out, graph, removed)
        report.max_abs_diff, report.max_rel_diff = _max_diff(out, reference)
        report.params_after = sum(p.numel() for p in work.parameters())
        if self.verify and not report.max_rel_diff <= self.tolerance:
            hint = ""
            if report.inexact:
                hint = (" Removed channels still carry a constant (for example a BatchNorm bias) into a padded "
                        "convolution, where it cannot be folded exactly; prune with dummy_input=... so the masks "
                        "cover the whole channel group, norm layers included.")
            raise RuntimeError(
                f"ModelSpeedup: the shrunk model differs from the masked model by {report.max_rel_diff:.3g} "
                f"(relative; tolerance {self.tolerance}); the model was left unchanged.{hint}\n{report}"
            )
        detach_masks(self.model, apply=True)
        for owner in touched:
            src, dst = work.get_submodule(owner), self.model.get_submodule(owner)
            dst._parameters.update(src._parameters)
            dst._buffers.update(src._buffers)
            for attr in _ATTRS:
                if hasattr(src, attr):
                    setattr(dst, attr, getattr(src, attr))
        return self.model
