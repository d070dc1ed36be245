"""Apply a plan: slice every parameter and buffer in place, keeping parameter objects,
update module attributes and optimizer state, and undo all of it on request."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..graph import ChannelGraph
from ..layers import LAYERS
from .plan import Plan




class Undo:
    """A log of changes to reverse, newest first."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def add(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def set_data(self, t: torch.Tensor, value: torch.Tensor) -> None:
        old = t.data
        self.add(lambda: setattr(t, "data", old))
        t.data = value

    def run(self) -> None:
        for step in reversed(self._steps):
            step()
        self._steps.clear()


def _owners(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Tensor name -> every (module, attribute) holding that tensor (tied weights share)."""
    by_id: dict[int, list[tuple[nn.Module, str]]] = {}
    names: list[tuple[str, int]] = []
    for mname, module in model.named_modules(remove_duplicate=False):
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                by_id.setdefault(id(t), []).append((module, attr))
                names.append((f"{mname}.{attr}" if mname else attr, id(t)))
    return {name: by_id[key] for name, key in names}


def _keep_index(ids: torch.Tensor, graph: ChannelGraph, removed: torch.Tensor) -> torch.Tensor | None:
    keep = ~removed[graph.component[ids]]
    return None if bool(keep.all()) else keep.nonzero().flatten()


def _slice(t: torch.Tensor, dims: dict[int, torch.Tensor]) -> torch.Tensor:
    for d, index in dims.items():
        t = t.index_select(d, index.to(t.device))
    return t


def apply_plan(model: nn.Module, graph: ChannelGraph, plan: Plan, undo: Undo,
               masks: dict[int, tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Shrink ``model`` in place by ``plan``; every change is logged in ``undo``.

    Args:
        masks: id of a parameter -> (parameter, mask). Each masked parameter ends up holding
            its masked value; only the kept part is multiplied (slice first, then mask).

    Returns:
        module name -> output channels removed, for the report.
    """
    removed = plan.removed
    owners = _owners(model)
    modules = dict(model.named_modules())
    folds: dict[int, torch.Tensor] = {}
    for fold in plan.folds:  # per original output channel; added to the bias as it is sliced
        module = modules[fold.module]
        if module.bias is None:
            w = module.weight
            module.bias = nn.Parameter(torch.zeros(fold.contribution.shape[0], dtype=w.dtype, device=w.device))
            undo.add(lambda m=module: m.register_parameter("bias", None))
            graph.tensors[f"{fold.module}.bias"] = {0: graph.modules[fold.module].out_ids}
            owners[f"{fold.module}.bias"] = [(module, "bias")]
        folds[id(module.bias)] = fold.contribution
    state = optimizer.state if optimizer is not None else {}
    jobs: dict[int, tuple[torch.Tensor, list, dict[int, torch.Tensor]]] = {}
    for fqn, dims in graph.tensors.items():
        holders = owners.get(fqn)
        if not holders:
            continue
        t = getattr(*holders[0])
        index = {d: k for d, ids in dims.items() if (k := _keep_index(ids, graph, removed)) is not None}
        if id(t) not in jobs or index:
            jobs[id(t)] = (t, holders, index)
    for key, (p, _) in masks.items():
        jobs.setdefault(key, (p, [], {}))
    touched_modules: dict[int, nn.Module] = {}
    for key, (t, holders, index) in jobs.items():
        mask, extra = masks.get(key, (None, None))[1], folds.get(key)
        if not index and mask is None and extra is None:
            continue
        old_shape = t.shape
        if not isinstance(t, nn.Parameter):
            new = _slice(t, index)
            for m, a in holders:
                undo.add(lambda m=m, a=a, v=t: m._buffers.__setitem__(a, v))
                m._buffers[a] = new
        else:
            new = _slice(t.data, index)
            if mask is not None:
                new = new * _slice(mask, index).to(new.dtype)
            if extra is not None:
                new = new + _slice(extra.to(new), {0: index[0]} if 0 in index else {})
            undo.set_data(t, new)
            if index and t.grad is not None:
                grad = t.grad
                undo.add(lambda t=t, g=grad: setattr(t, "grad", g))
                t.grad = _slice(grad, index) if grad.shape == old_shape else None
            for k, value in list(state.get(t, {}).items()) if index else ():
                if isinstance(value, torch.Tensor) and value.shape == old_shape:
                    undo.add(lambda s=state[t], k=k, v=value: s.__setitem__(k, v))
                    state[t][k] = _slice(value, index)
        if index:
            for m, _ in holders:
                touched_modules[id(m)] = m
    for name in graph.modules:  # layers without tensors (InstanceNorm without affine) change size too
        module = modules[name]
        touched_modules.setdefault(id(module), module)
    removed_out: dict[str, int] = {}
    names = {id(m): n for n, m in model.named_modules()}
    for module in touched_modules.values():
        family = LAYERS.family_of(module)
        if family is None:
            continue
        name = names.get(id(module), "")
        use = graph.modules.get(name)
        n_in = n_out = None
        if use is not None:
            if use.in_ids is not None:
                n_in = int((~removed[graph.component[use.in_ids]]).sum())
            if use.out_ids is not None:
                n_out = int((~removed[graph.component[use.out_ids]]).sum())
                gone = use.out_ids.numel() - n_out
                if gone and not family.follows_input:  # a norm layer loses what its producer loses
                    removed_out[name] = gone
        attrs = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        undo.add(lambda m=module, a=attrs: m.__dict__.update(a))
        family.update_attrs(module, n_in, n_out)
    follow_sizes(modules, graph, removed, undo)
    return removed_out


def follow_sizes(modules: dict[str, nn.Module], graph: ChannelGraph, removed: torch.Tensor, undo: Undo) -> None:
    """Give the integer attributes that sizes depend on (head counts, widths of all heads,
    ``split`` sizes) their values after pruning, in the module whose forward uses them.

    Changed: every integer attribute that the forward read during the trace and that
    equals a size that changes (it is what the forward computes with), and, for a
    consistent module, an unread one whose name says it counts heads (``num_heads``,
    ``all_head_size``) unless its value is also a head's width. Attributes the module's
    class lists in ``fixed_sizes`` never change. A shared ``config`` object is never
    changed (it still describes the original model).

    Raises:
        RuntimeError: one value of a module would have to become two different values.
    """
    change: dict[str, dict[int, int]] = {}
    for site in graph.sizes:
        new = int((~removed[graph.component[site.ids]]).sum()) * site.per
        seen = change.setdefault(site.module, {})
        if seen.setdefault(site.value, new) != new:
            raise RuntimeError(
                f"ModelSpeedup: {site.module or 'the model'} uses the number {site.value} for two sizes that pruning "
                f"changes differently ({seen[site.value]} and {new}); exclude its layers from pruning."
            )
    head_dims: dict[str, set[int]] = {}
    for h in graph.heads:
        head_dims.setdefault(h.module, set()).add(h.head_dim)
    for name, values in change.items():
        values = {old: new for old, new in values.items() if old != new}
        module = modules.get(name)
        if not values or module is None:
            continue
        read = graph.int_reads.get(name, set())
        stay = getattr(type(module), "fixed_sizes", None)
        for attr, value in list(vars(module).items()):
            if type(value) is not int or value not in values or attr in (stay or ()):
                continue
            # Unread, so only for a consistent module: one whose name says it counts heads.
            plain = stay is not None or value not in head_dims.get(name, set())
            named = "head" in attr.lower() and plain
            if attr in read or named:
                undo.add(lambda m=module, a=attr, v=value: setattr(m, a, v))
                setattr(module, attr, values[value])
