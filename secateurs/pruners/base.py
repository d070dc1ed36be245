"""The pruner base class: config_list -> settings -> scores -> masks -> attached masks."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .._errors import did_you_mean
from ..config import ConfigSchema, ModuleSetting, resolve
from ..graph import ChannelGraph, trace_channels
from ..layers import LAYERS
from ..masks import MaskDict, Masks, attach_masks, check_masks, detach_masks, get_masks
from ..report import SparsityReport, sparsity_report
from ..sparsity import Slot, allocate, block_shape, check_scores, expand_units, make_slots, to_units
from ..targets import get_module
from .dependency import plan_dependencies

STATE_FORMAT = "secateurs.pruner/1"


class UnprunedWarning(UserWarning):
    """Some selected layers or channels cannot be pruned (the trace fixes them)."""


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

    Every registered pruner declares ``needs`` in its own class body: the constructor
    arguments it requires besides ``model`` and ``config_list`` (``"evaluator"``,
    ``"training_steps"``), so that tools and the contract tests can build any pruner
    from the registry.
    """

    registry_name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    default_granularity: ClassVar[str] = "out_channel"
    default_op_types: ClassVar[tuple[str, ...]] = ("Conv1d", "Conv2d", "Conv3d", "Linear")
    extra_config_keys: ClassVar[Mapping[str, Any]] = {}
    # True for pruners that meet the config's ratio over all selected layers together and
    # choose each layer's (the search pruners), instead of realising it in every layer.
    budget_over_layers: ClassVar[bool] = False

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
            # Unknown ops are named by the one UnprunedWarning, for the selected channels they fix.
            self.graph = trace_channels(self.net, dummy_input, warn=False, free_outputs=named & set(self.settings))
        families = [LAYERS.family_of(get_module(self.net, t.module_name)) is not None for t in self.targets]
        self._plan = plan_dependencies(self.targets, self.graph, families)
        self.unpruned: dict[tuple[str, str], str] = self._explain_fixed()
        self.masks: Masks = {}

    def _explain_fixed(self) -> dict[tuple[str, str], str]:
        """Refuse configs none of whose layers can be pruned; warn once about the others.

        Returns:
            (module name, target name) -> why (some of) its channels are not pruned.
        """
        fixed = self._plan.fixed
        notes = {}
        for i, (k, n, reasons) in fixed.items():
            t = self.targets[i]
            why = "; ".join(reasons)
            notes[(t.module_name, t.name)] = f"not pruned: {why}" if k == n else f"{k} of {n} channels not pruned: {why}"
        if not notes:
            return notes
        by_config: dict[int, list[int]] = {}
        for i, t in enumerate(self.targets):
            by_config.setdefault(t.setting.config_index, []).append(i)
        for index, idx in by_config.items():
            if all(i in fixed and fixed[i][0] == fixed[i][1] for i in idx):
                layers = "; ".join(f"{self.targets[i].module_name!r} ({', '.join(fixed[i][2])})" for i in idx)
                hint = " A model output is pruned only when a config names its layer in 'op_names'." \
                    if "model output" in layers else ""
                raise ValueError(
                    f"config_list[{index}]: with dummy_input, none of the layers it selects can be pruned, "
                    f"because the trace fixes every output channel of each: {layers}. Select other layers or "
                    f"exclude these.{hint}"
                )
        # An output layer kept whole is the documented default (DESIGN.md: outputs are pruned only
        # when named), so it is in the report but not in the warning.
        surprising = {(self.targets[i].module_name, self.targets[i].name) for i, (k, n, reasons) in fixed.items()
                      if k != n or set(reasons) != {"model output"}}
        listed = "; ".join(f"{m}.{n} {note}" for (m, n), note in notes.items() if (m, n) in surprising)
        if not listed:
            return notes
        warnings.warn(f"{type(self).__name__}: with dummy_input, these selected channels stay unpruned: {listed}.",
                      UnprunedWarning, stacklevel=3)
        return notes

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

        Dependency groups (shared ``dependency_group_id``, and with ``dummy_input`` the
        traced coupling: residual adds, concatenations, depthwise convs ...) share one
        ranking of summed scores per channel group; with ``dummy_input`` the masks cover
        every parameter the removed channels touch (producers, their biases, the norm
        layers after them and the consumers' input columns), so the masked model is the
        pruned model.

        Masks compose with those already attached: a unit whose elements are all masked
        scores ``-inf`` (it is counted among the ``floor(n * r)`` pruned units first) and
        each new mask is AND-ed with the attached one, so no pruned unit comes back.
        """
        existing = get_masks(self.net)
        slots = self._slots(existing)
        return self._masks_from_keeps(slots, allocate(slots), existing)

    def _slots(self, existing: Masks) -> list[Slot]:
        """The ranking slots: one per target ranked alone (first, in target order), then one
        per dependency slot of the plan, each with its unit scores and bounds."""
        plan = self._plan
        alone = [i for i in range(len(self.targets)) if i not in plan.members]
        scores: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for i in alone + [m for d in plan.slots for m in d.members]:
                scores[i] = self._unit_scores(self.targets[i], existing)
            slots = make_slots([
                ((t.module_name, t.name), scores[i].reshape(t.shape[0], -1) if t.per_channel else scores[i], t.setting)
                for i, t in ((i, self.targets[i]) for i in alone)
            ])
            for d in plan.slots:
                device = scores[d.members[0]].device
                totals = torch.zeros(d.n, dtype=torch.float64, device=device)
                for m, g in zip(d.members, d.groups):
                    ok = g >= 0
                    totals.index_add_(0, g[ok].to(device), scores[m].to(device)[ok.to(device)].double())
                keys = [(self.targets[m].module_name, self.targets[m].name) for m in d.members]
                totals = totals.float().reshape(d.rows, -1) if d.rows else totals.float()
                slots.append(Slot(keys, totals, d.setting, d.min_count, d.max_count))
        return slots

    def _masks_from_keeps(self, slots: list[Slot], keeps: list[torch.Tensor], existing: Masks) -> Masks:
        """Masks of every tensor from one unit keep-mask per slot of :meth:`_slots` (the
        graph's producers, norms and consumers included), AND-ed with ``existing``."""
        plan = self._plan
        by_key = {(t.module_name, t.name): t for t in self.targets}
        n_alone = len(slots) - len(plan.slots)
        masks: Masks = {}
        for slot, keep in zip(slots[:n_alone], keeps):
            (key,) = slot.keys
            self._put(masks, by_key[key], keep.reshape(-1))
        removed = torch.zeros(self.graph.fixed.numel(), dtype=torch.bool) if self.graph is not None else None
        for d, keep in zip(plan.slots, keeps[n_alone:]):
            keep = keep.reshape(-1).cpu()
            for m, g, comp in zip(d.members, d.groups, d.comps):
                ok = g >= 0
                unit_keep = torch.ones(g.numel(), dtype=torch.bool)
                unit_keep[ok] = keep[g[ok]]
                self._put(masks, self.targets[m], unit_keep)
                if comp is not None:
                    removed[comp[~unit_keep]] = True
        if removed is not None and bool(removed.any()):
            for owner, targets in self._graph_masks(removed).items():
                entry = masks.setdefault(owner, {})
                for name, mask in targets.items():
                    entry[name] = entry[name] & mask.to(entry[name].device) if name in entry else mask
        for owner, entry in masks.items():
            for name, mask in entry.items():
                old = existing.get(owner, {}).get(name)
                if old is not None:
                    entry[name] = mask.to(old.device) & old
        order = {name: i for i, (name, _) in enumerate(self.net.named_modules())}
        return dict(sorted(masks.items(), key=lambda item: order[item[0]]))

    def _scored_tensor(self, t: Target) -> torch.Tensor:
        """The tensor whose units :meth:`score` ranks: the target as the model computes with it."""
        return getattr(get_module(self.net, t.module_name), t.name).detach()

    def _unit_scores(self, t: Target, existing: Masks) -> torch.Tensor:
        """Flat unit scores of ``t``; units already wholly masked score ``-inf``."""
        tensor = self._scored_tensor(t)
        scores = self.score(t, to_units(tensor, t.blocks)).reshape(-1)
        check_scores((t.module_name, t.name), scores)
        old = existing.get(t.module_name, {}).get(t.name)
        if old is not None:
            gone = to_units(old.float(), t.blocks, pad=0.0).amax(1) == 0
            scores = scores.float().masked_fill(gone.to(scores.device), -math.inf)
        return scores

    @staticmethod
    def _put(masks: Masks, t: Target, unit_keep: torch.Tensor) -> None:
        entry = masks.setdefault(t.module_name, {})
        entry[t.name] = expand_units(unit_keep, t.shape, t.blocks)
        for name in t.aligned:  # its own tensor: a weight of shape (C,) would otherwise share it
            entry[name] = expand_units(unit_keep, (t.shape[t.out_dim],), (t.blocks[t.out_dim],)).clone()

    def compress(self) -> tuple[nn.Module, Masks]:
        """Compute masks and attach them to the model in place.

        Returns:
            The model object given to the constructor (now computing with masked weights)
            and the masks, keyed by module names inside a (Distributed)DataParallel wrapper.
        """
        self.masks = MaskDict(self.calculate_masks())
        self.masks.trace = self.graph
        attach_masks(self.net, self.masks)
        return self.model, self.masks

    def unwrap_model(self) -> None:
        """Detach the masks in place; pruned entries of the parameters become zero."""
        detach_masks(self.net, apply=True)

    def report(self) -> SparsityReport:
        """Per-target realised sparsity of the current masks, with the config each came from;
        selected tensors that stay (partly) unpruned are listed with the reason."""
        return sparsity_report(self.net, self.masks, self.settings, notes=self.unpruned)

    # -- saving and restoring ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pruner's state as a flat dict of str -> tensor or JSON-able value.

        Keys: ``"format"``, ``"pruner"`` (registry name), ``"config_list"``, one
        ``"masks/<module>/<target>"`` bool tensor per mask, and the pruner's learned state
        (the statistics of data-driven pruners, ``"stats/<module>/<target>"``). It holds no
        module objects, so it can be saved with safetensors and JSON, without pickle.
        """
        state: dict[str, Any] = {"format": STATE_FORMAT, "pruner": self.registry_name,
                                 "config_list": _jsonable(self.config_list)}
        for module_name, targets in self.masks.items():
            for name, mask in targets.items():
                state[f"masks/{module_name}/{name}"] = mask.detach().bool().cpu().clone()  # no shared storage
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned: the masks are attached to the model
        (in place) and the learned state restored.

        Raises:
            ValueError: the state is of another format or pruner, was made with another
                config_list, names a module or tensor the model does not have, holds a
                mask of the wrong shape, or has keys this pruner does not know.
            TypeError: the state is not a dict, or a mask or statistic is not a tensor.
        """
        name = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"{name}.load_state_dict: state must be a dict; got {type(state).__name__}.")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{name}.load_state_dict: 'format' must be {STATE_FORMAT!r}; got {state.get('format')!r}.")
        if state.get("pruner") != self.registry_name:
            raise ValueError(f"{name}.load_state_dict: the state is of pruner {state.get('pruner')!r}, "
                             f"not {self.registry_name!r}.")
        mine = _jsonable(self.config_list)
        if _jsonable(state.get("config_list")) != mine:
            raise ValueError(f"{name}.load_state_dict: the state was made with config_list "
                             f"{state.get('config_list')!r}, but this pruner has {mine!r}.")
        masks: Masks = {}
        extra = {}
        modules = dict(self.net.named_modules())
        for key, value in state.items():
            if key in ("format", "pruner", "config_list"):
                continue
            kind, _, rest = key.partition("/")
            module_name, _, target = rest.rpartition("/")
            if kind not in ("masks", *self._extra_state_kinds()) or not module_name or not target:
                raise ValueError(f"{name}.load_state_dict: unknown key {key!r}; expected 'format', 'pruner', "
                                 f"'config_list' or '<kind>/<module>/<target>' with a kind in "
                                 f"{['masks', *self._extra_state_kinds()]}.")
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}.load_state_dict: {key!r} must be a tensor; got {type(value).__name__}.")
            if module_name not in modules:
                raise ValueError(f"{name}.load_state_dict: {key!r} names module {module_name!r}, which "
                                 f"{type(self.net).__name__} does not have{did_you_mean(module_name, modules)}.")
            if kind == "masks":
                masks.setdefault(module_name, {})[target] = value
            else:
                extra[key] = value
        try:
            masks = check_masks(self.net, masks)
        except KeyError as err:
            raise ValueError(f"{name}.load_state_dict: {err.args[0]}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}.load_state_dict: {err}") from None
        self._load_extra_state(extra)
        self.masks = masks
        attach_masks(self.net, masks)

    def _extra_state(self) -> dict[str, torch.Tensor]:
        """The pruner's own learned state, keyed ``"<kind>/<module>/<target>"``."""
        return {}

    def _extra_state_kinds(self) -> tuple[str, ...]:
        return ()

    def _load_extra_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Validate and restore what :meth:`_extra_state` returned (raise ValueError)."""


def _jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value))
