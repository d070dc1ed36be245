"""Plan: which channel groups the masks remove, and which stay (with the reason).

A group (component of the channel graph) is *wanted* when a layer that produces it has
the channel wholly masked (a conv's filter, a linear's row), or a norm layer has both
its scale and shift masked there (Network Slimming). A wanted group is *removed* only
when removing it is exact: it is not fixed by the trace; no source still puts an
input-dependent value on it (every layer that produces it is masked there, or feeds only a
silenced norm layer; parameters used outside layers are zero there); and every layer
that consumes it sees, in the masked model, a constant on that channel that is zero or
folds exactly into the consumer's bias. Everything else the masks ask for is kept and
reported; the plan never widens a mask in a way that would change what the masked model
computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..graph import ChannelGraph, plain_name
from ..layers import LAYERS, stored

_SAME = 1e-6  # relative spread below which a channel's input counts as constant


@dataclass
class Fold:
    """A constant that removed input channels of ``module`` carry, to add to its bias."""

    module: str
    contribution: torch.Tensor  # one value per output channel (before slicing)
    channels: int


@dataclass
class Plan:
    """What the engine will do.

    Attributes:
        removed: per component, True when its channels go.
        folds: constants to fold into consumers' biases.
        kept: readable lines for wanted groups that stay, with why.
        extended: readable lines for producers that lose more channels than their masks
            said, because the rest of their group goes (exactly).
        not_shrunk: masked layers the plan cannot shrink, with why.
    """

    removed: torch.Tensor
    folds: list[Fold] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    not_shrunk: list[str] = field(default_factory=list)


def _channel_zero(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Per index along ``dim``: is the whole slice masked (or zero)?"""
    return ~mask.movedim(dim, 0).reshape(mask.shape[dim], -1).any(1)


def _follows(use) -> bool:
    """Does this layer pass its input's channels on (a norm layer, PReLU)?"""
    return LAYERS.get(use.family).follows_input


def _sources(model: nn.Module, graph: ChannelGraph, masks: Mapping) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Per component: *wanted* (a mask silences one of its channels) and *live* (some
    source still puts an input-dependent value on it); and per producer its silenced rows.

    Sources are the layers that create channels (a conv's filters, a linear's rows) and
    parameters used outside layers. A producer is silenced at a channel when its mask
    zeroes that output; or when its output feeds only a norm layer whose scale and
    shift are both masked there (Network Slimming's masks), which outputs zero.
    """
    n_comp = graph.fixed.numel()
    modules = dict(model.named_modules())
    # Masks by stored parameter, so a tied weight's mask is found from every module that holds it.
    by_tensor = {key: m for key, (_, m) in masks.items()}
    wanted = torch.zeros(n_comp, dtype=torch.bool)
    live = torch.zeros(n_comp, dtype=torch.bool)
    silent_norm: dict[str, torch.Tensor] = {}
    for name, use in graph.modules.items():
        module = modules[name]
        if _follows(use) and use.out_ids is not None:
            w, b = (by_tensor.get(id(stored(module, t))) for t in ("weight", "bias"))
            if w is not None and w.dim() == 1 and (b is not None or getattr(module, "bias", None) is None):
                silent = ~w if b is None else ~w & ~b
                wanted[graph.component[use.out_ids][silent]] = True
                if use.input_from is not None:
                    silent_norm[use.input_from] = silent
    producers = []
    owned = set()
    for name, use in graph.modules.items():
        module = modules[name]
        owned.update(plain_name(f"{name}.{t}") for t, _ in module.named_parameters())
        family = LAYERS.family_of(module)
        if use.out_ids is None or family is None or _follows(use):
            continue
        out_dim = family.weight_dims(module)[0]
        weight = stored(module, "weight")
        if out_dim is None or weight is None or weight.shape[out_dim] != use.out_ids.numel():
            live[graph.component[use.out_ids]] = True  # makes channels we cannot see the rows of
            continue
        mask = by_tensor.get(id(weight))
        masked = _channel_zero(mask, out_dim) if mask is not None else torch.zeros(use.out_ids.numel(), dtype=torch.bool)
        wanted[graph.component[use.out_ids][masked]] = True
        silenced = masked.clone()
        if name in silent_norm and use.out_uses == 1:
            silenced |= silent_norm[name]
        live[graph.component[use.out_ids][~silenced]] = True
        producers.append((name, use.out_ids, masked))
    params = {plain_name(n): p for n, p in model.named_parameters()}
    for fqn, dims in graph.tensors.items():
        if fqn in owned or fqn not in params:
            continue
        value = params[fqn].detach()
        if id(params[fqn]) in by_tensor:
            value = value * by_tensor[id(params[fqn])]
        for d, ids in dims.items():  # a parameter used by ops outside layers: live unless zero there
            live[graph.component[ids][~_channel_zero(value != 0, d)]] = True
    return wanted, live, producers


def _consumer_check(modules, graph, name, use, candidates):
    """For one consumer: the candidate channels it blocks (their value would be lost), and
    the fold that keeps the rest exact (or None)."""
    comps = graph.component[use.in_ids]
    gone = candidates[comps]
    if not bool(gone.any()):
        return None, None, ""
    stats = graph.input_stats.get(name)
    if stats is None:
        return comps[gone], None, f"{name} consumes them but its input was not measured"
    lo, hi, mean = stats[:, gone.to(stats.device)]
    scale = torch.maximum(lo.abs(), hi.abs())
    varies = (hi - lo) > _SAME * (1 + scale)
    nonzero = (scale > 1e-12) & ~varies
    bad = varies.clone()
    fold = None
    if bool(nonzero.any()):
        module = modules[name]
        family = LAYERS.family_of(module)
        # A layer traced op by op (its own forward) may pad or transform: never folded.
        idx = gone.nonzero().flatten()[nonzero]
        result = family.fold(module, idx.to(module.weight.device), mean[nonzero]) if use.plain else None
        if result is None or not result[1]:
            bad |= nonzero
        else:
            fold = Fold(name, result[0], int(nonzero.sum()))
    why = "a value that varies" if bool(varies.any()) else "a constant that cannot be folded exactly"
    return comps[gone][bad.to(comps.device)], fold, f"still carry {why} into {name}"


def _keep_one_head(graph: ChannelGraph, candidates: torch.Tensor, plan: Plan) -> None:
    """An attention layer keeps at least one head (its forward cannot run with none): when
    every head of a split would go, the first stays, with its masked (zero) weights, which
    is what the masked model computed with."""
    emptied = set()
    for h in graph.heads:
        comps = graph.component[h.ids]
        if bool(candidates[comps].all()):
            candidates[comps[0]] = False
            emptied.add(h.module)
    plan.kept += [f"{m or 'the model'}: one masked attention head kept (a layer cannot have zero heads)"
                  for m in sorted(emptied)]


def plan_removal(model: nn.Module, graph: ChannelGraph, masks: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> Plan:
    """Decide what goes; ``model`` computes with the masks attached, ``graph`` was traced
    on it with ``record_inputs``; ``masks`` maps the id of each masked parameter to
    (parameter, mask).

    A wanted group goes when it is not fixed, no source keeps it live, and every layer
    that consumes it receives a constant that is zero or folds exactly into its bias
    (measured on the example; the value is input-independent because no source is live).
    """
    wanted, live, producers = _sources(model, graph, masks)
    plan = Plan(removed=torch.zeros_like(wanted))
    for name, ids, masked in producers:
        fixed_here = masked & graph.fixed[graph.component[ids]]
        if bool(fixed_here.any()):
            why = "; ".join(graph.why_fixed(ids[fixed_here]))
            hint = " (ModelSpeedup(..., prune_outputs=True) shrinks it)" if why == "model output" else ""
            plan.kept.append(f"{name}: {int(fixed_here.sum())} masked output channel(s) kept: {why}{hint}")
    n_live = int((wanted & ~graph.fixed & live).sum())
    if n_live:
        plan.kept.append(f"{n_live} masked channel group(s) are still fed by unmasked layers (masks cover only part "
                         "of the group); prune with dummy_input=... so the masks cover whole groups")
    candidates = wanted & ~graph.fixed & ~live
    _keep_one_head(graph, candidates, plan)
    modules = dict(model.named_modules())
    consumers = [(n, u) for n, u in graph.modules.items()
                 if u.in_ids is not None and u.in_ids is not u.out_ids and not _follows(u)]
    for _ in range(2):  # blocking a channel can change what another consumer folds: settle once more
        folds = []
        for name, use in consumers:
            blocked, fold, why = _consumer_check(modules, graph, name, use, candidates)
            if blocked is not None and blocked.numel():
                candidates[blocked] = False
                plan.kept.append(f"{blocked.numel()} masked channel(s) {why}; they are kept (prune with "
                                 "dummy_input=... so the masks cover the whole channel group)")
            if fold is not None:
                folds.append(fold)
    plan.removed, plan.folds = candidates, folds
    for name, ids, masked in producers:
        extra = int((plan.removed[graph.component[ids]] & ~masked).sum())
        if extra:
            plan.extended.append(f"{name}: {extra} more output channel(s) removed with their group, whose values "
                                 "never reach a consumer")
    names = {id(p): plain_name(n) for n, p in model.named_parameters(remove_duplicate=False)}
    for key, (_, mask) in masks.items():
        fqn = names.get(key, "?")
        if fqn not in graph.tensors and fqn.rpartition(".")[0] not in graph.modules and not bool(mask.all()):
            plan.not_shrunk.append(f"{fqn}: masked, but its layer did not run on the example input "
                                   "(not called, or its weights are used by other code)")
    return plan
