"""The pruner base class: config_list -> settings -> scores -> masks -> attached masks."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..config import ConfigSchema, ModuleSetting, resolve
from ..masks import Masks, attach_masks, detach_masks
from ..report import SparsityReport, sparsity_report
from ..graph import ChannelGraph, trace_channels
from ..layers import LAYERS
from ..sparsity import Slot, _bounds, allocate, block_shape, expand_units, make_slots, to_units
from ..targets import get_module



@dataclass(frozen=True)
class Target:
    """One tensor to score and mask.

    Attributes:
        module_name / name: where the tensor lives (``module_name.name``).
        shape: its shape.
        blocks: the unit (block) shape.
        per_channel: rank units inside each row of dim 0 instead of across the tensor.
        aligned: tensors (biases) that follow this one's output-channel mask.
        out_dim: the output-channel dim of the tensor.
        setting: the module's resolved setting.
    """

    module_name: str
    name: str
    shape: tuple[int, ...]
    blocks: tuple[int, ...]
    per_channel: bool
    aligned: tuple[str, ...]
    out_dim: int
    setting: ModuleSetting


class Pruner:
    """Base of every pruner. Subclasses set ``criterion`` or override :meth:`score`.

    The constructor stores the model and validates ``config_list`` against it (errors
    surface at once); :meth:`compress` computes masks and attaches them in place.
    """

    registry_name: ClassVar[str]
    default_granularity: ClassVar[str] = "out_channel"
    default_op_types: ClassVar[tuple[str, ...]] = ("Conv1d", "Conv2d", "Conv3d", "Linear")
    extra_config_keys: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], *, dummy_input: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}: model must be a torch.nn.Module; got {type(model).__name__}.")
        self.model = model
        # A model wrapped in (Distributed)DataParallel is pruned through its inner module;
        # configs may name modules with or without the wrapper's "module." prefix.
        wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        self.net: nn.Module = model.module if wrapped else model
        self.config_list = copy.deepcopy(config_list)
        self.settings = self._adjust_settings(
            resolve(self.net, config_list, self.config_schema(), alias_prefix="module." if wrapped else None)
        )
        self.targets = [t for s in self.settings.values() for t in self._targets_of(s)]
        self.dummy_input = dummy_input
        self.graph: ChannelGraph | None = None
        if dummy_input is not None:
            # Output layers keep their outputs unless a config names them in op_names.
            named = {n[len("module."):] if wrapped and n.startswith("module.") else n
                     for c in config_list if isinstance(c, dict) for n in c.get("op_names", ())}
            self.graph = trace_channels(self.net, dummy_input, free_outputs=named & set(self.settings))
        self.masks: Masks = {}

    def _adjust_settings(self, settings: dict[str, ModuleSetting]) -> dict[str, ModuleSetting]:
        """Hook for pruners whose algorithm fixes part of the settings (Slim ranks globally)."""
        return settings

    @classmethod
    def config_schema(cls) -> ConfigSchema:
        return ConfigSchema(
            owner=cls.__name__,
            default_op_types=cls.default_op_types,
            extra_keys=cls.extra_config_keys,
        )

    def _targets_of(self, setting: ModuleSetting) -> list[Target]:
        module = get_module(self.net, setting.module_name)
        explicit = setting.target_names is not None
        names = list(setting.target_names) if explicit else ["weight"]
        for name in names:
            if not isinstance(getattr(module, name, None), torch.Tensor):
                key = "'target_names'" if explicit else "the default target 'weight'"
                raise ValueError(
                    f"config_list[{setting.config_index}]: {key} asks for tensor {name!r}, but "
                    f"{setting.module_name!r} ({setting.module_type}) has no such tensor."
                )
        family = LAYERS.family_of(module)
        out_dim = family.weight_dims(module)[0] if family is not None else 0
        refusal = family.out_channel_refusal(module) if family is not None else None
        targets = []
        for name in names:
            shape = tuple(getattr(module, name).shape)
            where = f"{setting.module_name}.{name} ({setting.module_type})"
            if name == "bias" and "weight" in names:
                continue
            if setting.granularity == "per_channel" and out_dim != 0:
                raise ValueError(f"{where}: 'per_channel' granularity ranks rows of dim 0; not supported here.")
            channelwise = (setting.granularity if setting.granularity != "default" else self.default_granularity) \
                in ("out_channel", "in_channel")
            if name == "weight" and channelwise and (refusal is not None or out_dim is None):
                raise ValueError(f"config_list[{setting.config_index}]: {where}: "
                                 f"{refusal or 'its weight has no output-channel dim'}; exclude it.")
            blocks = block_shape(setting.granularity, shape, self.default_granularity, where, out_dim or 0)
            aligned = ()
            if name == "weight":
                whole_rows = all(b == s for d, (b, s) in enumerate(zip(blocks, shape)) if d != out_dim)
                bias = getattr(module, "bias", None)
                wants_bias = not explicit or "bias" in names
                if wants_bias and isinstance(bias, torch.Tensor) and whole_rows and bias.shape == (shape[out_dim],):
                    aligned = ("bias",)
                elif explicit and "bias" in names:
                    raise ValueError(
                        f"{where}: 'bias' can be pruned only with a granularity that covers whole "
                        f"output channels; got {setting.granularity!r}."
                    )
            per_channel = setting.granularity == "per_channel" or (
                setting.granularity == "default" and self.default_granularity == "per_channel"
            )
            targets.append(Target(setting.module_name, name, shape, blocks, per_channel, aligned, out_dim, setting))
        return targets

    def score(self, target: Target, units: torch.Tensor) -> torch.Tensor:
        """Scores of ``units`` (``(n_units, unit_numel)``) of one target; higher = keep."""
        return type(self).criterion(units)

    def _coupled(self, t: Target) -> bool:
        """Does ``t`` take part in dependency-aware pruning (a traced layer's output channels)?"""
        if self.graph is None or t.name != "weight" or t.per_channel or t.setting.dependency_group_id is not None:
            return False
        use = self.graph.modules.get(t.module_name)
        whole_rows = all(b == s for d, (b, s) in enumerate(zip(t.blocks, t.shape)) if d != t.out_dim)
        return use is not None and use.out_ids is not None and t.blocks[t.out_dim] == 1 and whole_rows \
            and use.out_ids.numel() == t.shape[t.out_dim]

    def _dependency_slots(self, scored: list[tuple[Target, torch.Tensor]]) -> list[tuple[Slot, torch.Tensor]]:
        """One slot per set of layers whose output channels are coupled; units = channel groups."""
        graph = self.graph
        comps = [graph.component[graph.modules[t.module_name].out_ids] for t, _ in scored]
        parent = list(range(len(scored)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        # Each channel group's first layer; a layer joins the first layer of each of its groups.
        layer_of = torch.cat([torch.full((c.numel(),), i) for i, c in enumerate(comps)])
        all_comps = torch.cat(comps)
        ok = ~graph.fixed[all_comps]
        layer_of, all_comps = layer_of[ok], all_comps[ok]
        first = torch.full((graph.fixed.numel(),), len(scored)).scatter_reduce(0, all_comps, layer_of, "amin")
        for i, j in torch.unique(torch.stack([layer_of, first[all_comps]], 1), dim=0).tolist():  # layer pairs
            parent[find(i)] = find(j)
        members: dict[int, list[int]] = {}
        for i in range(len(scored)):
            members.setdefault(find(i), []).append(i)
        out = []
        for idx in members.values():
            all_comps = torch.cat([comps[i] for i in idx])
            unique = all_comps[~graph.fixed[all_comps]].unique()
            if unique.numel() == 0:
                continue
            totals = torch.zeros(unique.numel(), dtype=torch.float64)
            for i in idx:
                c, scores = comps[i], scored[i][1].double()
                ok = ~graph.fixed[c]
                totals.index_add_(0, torch.searchsorted(unique, c[ok]), scores[ok])
            first = scored[idx[0]][0].setting
            low, high = _bounds(unique.numel(), [first], first.global_group_id is not None)
            keys = [(scored[i][0].module_name, scored[i][0].name) for i in idx]
            out.append((Slot(keys, totals.float(), first, low, high), unique))
        return out

    def _graph_masks(self, removed: torch.Tensor) -> Masks:
        """Masks for every parameter that carries a removed channel group."""
        graph, masks = self.graph, {}
        params = dict(self.net.named_parameters())
        for fqn, dims in graph.tensors.items():
            owner, _, attr = fqn.rpartition(".")
            module = get_module(self.net, owner)
            if not isinstance(getattr(module, attr, None), torch.Tensor):
                continue
            tensor = getattr(module, attr)
            if fqn not in params and not parametrize.is_parametrized(module, attr):
                continue  # a buffer: sliced by ModelSpeedup, never masked
            keep = torch.ones(tensor.shape, dtype=torch.bool)
            for d, ids in dims.items():
                gone = removed[graph.component[ids]]
                if bool(gone.any()):
                    shape = [1] * tensor.dim()
                    shape[d] = -1
                    keep &= ~gone.reshape(shape)
            if not bool(keep.all()):
                masks.setdefault(owner, {})[attr] = keep.to(tensor.device)
        return masks

    def calculate_masks(self) -> Masks:
        """Compute masks from the current (masked) weights without attaching them.

        With ``dummy_input``, output-channel targets are pruned by channel group: layers
        whose channels are coupled (residual adds, concatenations, depthwise convs ...)
        share one ranking of summed scores, and the masks cover every parameter the
        removed channels touch (producers, their biases, the norm layers after them and
        the consumers' input columns), so the masked model is the pruned model.
        """
        scored, coupled = [], []
        with torch.no_grad():
            for t in self.targets:
                tensor = getattr(get_module(self.net, t.module_name), t.name).detach()
                scores = self.score(t, to_units(tensor, t.blocks))
                if self._coupled(t):
                    coupled.append((t, scores.reshape(-1)))
                    continue
                if t.per_channel:
                    scores = scores.reshape(t.shape[0], -1)
                scored.append(((t.module_name, t.name), scores, t.setting))
            slots = make_slots(scored)
            del scored
            dep = self._dependency_slots(coupled) if coupled else []
            keeps = allocate(slots + [s for s, _ in dep])
        by_key = {(t.module_name, t.name): t for t in self.targets}
        masks: Masks = {}
        for slot, keep in zip(slots, keeps):
            keep = keep.reshape(-1)
            for key in slot.keys:
                t = by_key[key]
                entry = masks.setdefault(t.module_name, {})
                entry[t.name] = expand_units(keep, t.shape, t.blocks)
                for name in t.aligned:
                    entry[name] = expand_units(keep, (t.shape[t.out_dim],), (t.blocks[t.out_dim],))
        if dep:
            removed = torch.zeros(self.graph.fixed.numel(), dtype=torch.bool)
            for (_, unique), keep in zip(dep, keeps[len(slots):]):
                removed[unique[~keep]] = True
            for owner, targets in self._graph_masks(removed).items():
                entry = masks.setdefault(owner, {})
                for name, mask in targets.items():
                    entry[name] = entry[name] & mask if name in entry else mask
        return masks

    def compress(self) -> tuple[nn.Module, Masks]:
        """Compute masks and attach them to the model in place.

        Returns:
            The model object given to the constructor (now computing with masked weights)
            and the masks, keyed by module names inside a (Distributed)DataParallel wrapper.
        """
        self.masks = self.calculate_masks()
        attach_masks(self.net, self.masks)
        return self.model, self.masks

    def unwrap_model(self) -> None:
        """Detach the masks in place; pruned entries of the parameters become zero."""
        detach_masks(self.net, apply=True)

    def report(self) -> SparsityReport:
        """Per-target realised sparsity of the current masks, with the config each came from."""
        return sparsity_report(self.net, self.masks, self.settings)
