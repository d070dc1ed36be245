"""The pruner base class: config_list -> settings -> scores -> masks -> attached masks."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..config import ConfigSchema, ModuleSetting, resolve
from ..masks import Masks, attach_masks, detach_masks
from ..report import SparsityReport, sparsity_report
from ..sparsity import allocate, block_shape, expand_units, make_slots, to_units
from ..targets import get_module

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


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

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}: model must be a torch.nn.Module; got {type(model).__name__}.")
        self.model = model
        self.config_list = copy.deepcopy(config_list)
        self.settings = resolve(model, config_list, self.config_schema())
        self.targets = [t for s in self.settings.values() for t in self._targets_of(s)]
        self.masks: Masks = {}

    @classmethod
    def config_schema(cls) -> ConfigSchema:
        return ConfigSchema(
            owner=cls.__name__,
            default_op_types=cls.default_op_types,
            extra_keys=cls.extra_config_keys,
        )

    def _targets_of(self, setting: ModuleSetting) -> list[Target]:
        module = get_module(self.model, setting.module_name)
        explicit = setting.target_names is not None
        names = list(setting.target_names) if explicit else ["weight"]
        for name in names:
            if not isinstance(getattr(module, name, None), torch.Tensor):
                key = "'target_names'" if explicit else "the default target 'weight'"
                raise ValueError(
                    f"config_list[{setting.config_index}]: {key} asks for tensor {name!r}, but "
                    f"{setting.module_name!r} ({setting.module_type}) has no such tensor."
                )
        out_dim = 1 if isinstance(module, _TRANSPOSED) else 0
        targets = []
        for name in names:
            shape = tuple(getattr(module, name).shape)
            where = f"{setting.module_name}.{name} ({setting.module_type})"
            if name == "bias" and "weight" in names:
                continue
            if setting.granularity == "per_channel" and out_dim != 0:
                raise ValueError(f"{where}: 'per_channel' granularity ranks rows of dim 0; not supported here.")
            blocks = block_shape(setting.granularity, shape, self.default_granularity, where, out_dim)
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

    def calculate_masks(self) -> Masks:
        """Compute masks from the current (masked) weights without attaching them."""
        scored = []
        with torch.no_grad():
            for t in self.targets:
                tensor = getattr(get_module(self.model, t.module_name), t.name).detach()
                scores = self.score(t, to_units(tensor, t.blocks))
                if t.per_channel:
                    scores = scores.reshape(t.shape[0], -1)
                scored.append(((t.module_name, t.name), scores, t.setting))
            slots = make_slots(scored)
            del scored
            keeps = allocate(slots)
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
        return masks

    def compress(self) -> tuple[nn.Module, Masks]:
        """Compute masks and attach them to the model in place.

        Returns:
            The same model object (now computing with masked weights) and the masks.
        """
        self.masks = self.calculate_masks()
        attach_masks(self.model, self.masks)
        return self.model, self.masks

    def unwrap_model(self) -> None:
        """Detach the masks in place; pruned entries of the parameters become zero."""
        detach_masks(self.model, apply=True)

    def report(self) -> SparsityReport:
        """Per-target realised sparsity of the current masks, with the config each came from."""
        return sparsity_report(self.model, self.masks, self.settings)
