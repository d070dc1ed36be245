"""Dependency groups: targets whose units must be kept or pruned together.

Two kinds of coupling, joined in one connected-components step:

- declared: targets that share a ``dependency_group_id`` have their unit ``i`` coupled
  with each other's unit ``i`` (they must have the same number of units);
- traced (``dummy_input``): a target whose units are whole output channels has each
  channel coupled with its channel variable's component in the
  :class:`~secateurs.graph.ChannelGraph` (the producers, norms and consumers that must
  follow it, and the other layers joined to it by residual adds, depthwise convs ...).

Units joined by either are one *channel group*, kept or pruned as a whole. A group that
touches a channel the trace fixed (a model output, an unknown op ...) or a layer that did
not run on the example input is never pruned. Targets that share a prunable channel group
form one slot: their scores are summed per group and ranked together, so they must have
the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import ModuleSetting
from ..graph import ChannelGraph
from ..graph.trace import connected_labels
from ..sparsity import _bounds, grid_shape

if TYPE_CHECKING:  # base.py imports this module
    from .base import Target

DID_NOT_RUN = "did not run on the example input"
# What the members of one slot must agree on: the slot is ranked once, with one setting.
_SHARED = ("sparse_ratio", "sparse_threshold", "min_sparse_ratio", "max_sparse_ratio", "global_group_id")


@dataclass
class DependencySlot:
    """Targets ranked as one slot over their channel groups.

    Attributes:
        members: indices of the targets (in the pruner's ``targets``).
        groups: per member, unit -> channel group in ``[0, n)``; -1 for a fixed unit.
        comps: per member, unit -> graph component (traced members), else None.
        n: number of prunable channel groups.
        rows: for ``per_channel`` members, the number of rows ranked separately.
        setting / min_count / max_count: as in :class:`~secateurs.sparsity.Slot`.
    """

    members: list[int]
    groups: list[torch.Tensor]
    comps: list[torch.Tensor | None]
    n: int
    rows: int | None
    setting: ModuleSetting
    min_count: int
    max_count: int


@dataclass
class DependencyPlan:
    """Every target that takes part in dependency groups, and how.

    Attributes:
        members: indices of those targets (the others are ranked on their own).
        slots: the slots with at least one prunable channel group.
        fixed: target index -> (fixed units, units, reasons) for the targets with units
            that can never be pruned.
    """

    members: set[int]
    slots: list[DependencySlot]
    fixed: dict[int, tuple[int, int, list[str]]]


def unit_shape(t: Target) -> tuple[int, ...]:
    """Shape of a target's unit scores: ``(n,)``, or ``(rows, n / rows)`` for ``per_channel``."""
    n = math.prod(grid_shape(t.shape, t.blocks))
    return (t.shape[0], n // t.shape[0]) if t.per_channel else (n,)


def whole_output_channels(t: Target) -> bool:
    """Are ``t``'s units the whole output channels of a layer's weight?"""
    whole_rows = all(b == s for d, (b, s) in enumerate(zip(t.blocks, t.shape)) if d != t.out_dim)
    return t.name == "weight" and not t.per_channel and t.blocks[t.out_dim] == 1 and whole_rows


def plan_dependencies(targets: Sequence[Target], graph: ChannelGraph | None,
                      families: Sequence[bool]) -> DependencyPlan:
    """Join declared and traced couplings into channel groups and slots.

    Args:
        targets: the pruner's targets.
        graph: the traced channel graph, or None without ``dummy_input``.
        families: per target, whether its module is of a known layer family (only those
            are traced).

    Raises:
        ValueError: members of a ``dependency_group_id`` have different numbers of units
            or mix ``per_channel`` with other granularities; targets that share channel
            groups have different settings; their min/max ratios contradict.
    """
    comps: dict[int, torch.Tensor] = {}
    own_fixed: dict[int, torch.Tensor] = {}
    own_reasons: dict[int, list[str]] = {}
    for i, t in enumerate(targets):
        if graph is None or not families[i] or not whole_output_channels(t):
            continue
        use = graph.modules.get(t.module_name)
        if use is None:
            own_fixed[i] = torch.ones(unit_shape(t)[0], dtype=torch.bool)
            own_reasons[i] = [DID_NOT_RUN]
        elif use.out_ids is not None and use.out_ids.numel() == t.shape[t.out_dim]:
            comps[i] = graph.component[use.out_ids]
            own_fixed[i] = graph.fixed[comps[i]]
            if bool(own_fixed[i].any()):
                own_reasons[i] = graph.why_fixed(use.out_ids[own_fixed[i]])
    declared: dict[object, list[int]] = {}
    for i, t in enumerate(targets):
        if t.setting.dependency_group_id is not None:
            declared.setdefault(t.setting.dependency_group_id, []).append(i)
    members = sorted(set(own_fixed) | {i for idx in declared.values() for i in idx})
    if not members:
        return DependencyPlan(set(), [], {})
    _check_declared(targets, declared)

    # One connected-components step over every unit (and every graph component).
    pos = {m: k for k, m in enumerate(members)}
    sizes = [math.prod(unit_shape(targets[m])) for m in members]
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    n_units = offsets[-1]

    def units(m: int) -> torch.Tensor:
        return torch.arange(offsets[pos[m]], offsets[pos[m]] + sizes[pos[m]])

    a = [units(idx[0]) for idx in declared.values() for _ in idx[1:]] + [units(m) for m in comps]
    b = [units(j) for idx in declared.values() for j in idx[1:]] + [n_units + c for c in comps.values()]
    label = torch.arange(n_units + (graph.fixed.numel() if graph is not None else 0))
    if a:
        label = connected_labels(label, torch.cat(a), torch.cat(b))
    label = label[:n_units]  # per unit: the smallest unit index of its channel group
    fixed_unit = torch.zeros(n_units, dtype=torch.uint8)
    for m, f in own_fixed.items():
        fixed_unit[units(m)] = f.to(torch.uint8)
    fixed_unit = torch.zeros(n_units, dtype=torch.uint8).scatter_reduce(0, label, fixed_unit, "amax").bool()[label]

    # Targets that share a prunable channel group form one slot (a second components step).
    member_of = torch.repeat_interleave(torch.arange(len(members)), torch.tensor(sizes))
    live = ~fixed_unit
    slot_label = connected_labels(torch.arange(len(members) + n_units), member_of[live],
                                  len(members) + label[live])[: len(members)]
    plan = DependencyPlan(set(members), [], {})
    for m in members:
        f = fixed_unit[units(m)]
        if bool(f.any()):
            reasons = list(own_reasons.get(m, []))
            via = f & ~own_fixed.get(m, torch.zeros_like(f))
            if bool(via.any()):
                others = [targets[o].module_name for o, g in own_fixed.items()
                          if o != m and bool(torch.isin(label[units(o)][g], label[units(m)][via]).any())]
                reasons.append(f"shares channels with unprunable channels of {', '.join(map(repr, others))}")
            plan.fixed[m] = (int(f.sum()), f.numel(), reasons)
    for s in torch.unique(slot_label).tolist():
        idx = [members[k] for k in (slot_label == s).nonzero().flatten().tolist()]
        unit_labels = [label[units(m)] for m in idx]
        oks = [~fixed_unit[units(m)] for m in idx]
        groups = torch.cat([lab[ok] for lab, ok in zip(unit_labels, oks)]).unique()
        if groups.numel() == 0:
            continue
        _check_settings(targets, idx, graph is not None)
        per_member = []
        for lab, ok in zip(unit_labels, oks):
            g = torch.full_like(lab, -1)
            g[ok] = torch.searchsorted(groups, lab[ok])
            per_member.append(g)
        first = targets[idx[0]]
        rows = first.shape[0] if first.per_channel else None
        n = groups.numel()
        row_n = n // rows if rows else n
        # Each member's min/max ratio counts over the channel groups it touches.
        covered = [(row_n if rows else int(g[g >= 0].unique().numel()), targets[m].setting)
                   for m, g in zip(idx, per_member)]
        where = "the dependency group of " + ", ".join(f"{targets[m].module_name}.{targets[m].name}" for m in idx)
        low, high = _bounds(row_n, covered, first.setting.global_group_id is not None, where)
        plan.slots.append(DependencySlot(idx, per_member, [comps.get(m) for m in idx], n, rows, first.setting,
                                         low, high))
    return plan


def _check_declared(targets: Sequence[Target], declared: dict[object, list[int]]) -> None:
    for gid, idx in declared.items():
        shapes = [unit_shape(targets[i]) for i in idx]
        if len(set(shapes)) > 1:
            sizes = ", ".join(f"{targets[i].module_name}.{targets[i].name} has {s}" for i, s in zip(idx, shapes))
            raise ValueError(
                f"dependency_group_id {gid!r}: members must have the same number of units to share "
                f"channel indices; {sizes}."
            )
        if len({targets[i].per_channel for i in idx}) > 1:
            names = ", ".join(f"{targets[i].module_name}.{targets[i].name} "
                              f"({'per_channel' if targets[i].per_channel else 'not per_channel'})" for i in idx)
            raise ValueError(
                f"dependency_group_id {gid!r}: 'per_channel' ranks inside each row, so either every member "
                f"or none must use it; got {names}."
            )


def _check_settings(targets: Sequence[Target], idx: list[int], traced: bool) -> None:
    first = targets[idx[0]].setting
    for m in idx[1:]:
        other = targets[m].setting
        for key in _SHARED:
            if getattr(first, key) != getattr(other, key):
                gid = first.dependency_group_id
                via = (f"dependency_group_id {gid!r}" if gid is not None and gid == other.dependency_group_id
                       else "coupled by the trace of dummy_input" if traced else "dependency_group_id")
                raise ValueError(
                    f"{first.module_name!r} and {other.module_name!r} share output channels ({via}), so they "
                    f"are pruned as one group and need the same settings; but config_list[{first.config_index}] "
                    f"gives {first.module_name!r} {key}={getattr(first, key)!r} and "
                    f"config_list[{other.config_index}] gives {other.module_name!r} "
                    f"{key}={getattr(other, key)!r}. Give them the same {key!r} (or exclude one)."
                )
