"""The protocol every layer family implements, and the registry that lists them.

A *layer family* (convolutions, linear layers, batch norms, ...) is one small class that
holds what every part of the library needs to know about those layers:

- which modules it claims, and whether a module is *plain* (its forward is the family's
  own, so the tracer may treat it as one step) or must be traced through;
- the dims of its weight that carry output and input channels (pruners' granularities);
- how channel variables flow through it in the trace (:meth:`LayerFamily.trace`);
- which attributes change when it shrinks (:meth:`LayerFamily.update_attrs`);
- how a constant arriving on removed input channels folds into its bias, and when that
  is exact (:meth:`LayerFamily.fold`);
- its multiply-accumulates (:meth:`LayerFamily.macs`).

Adding a layer type is one file in this package and one ``LAYERS.register`` line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from .._errors import did_you_mean

if TYPE_CHECKING:  # the tracer imports this package, not the other way round
    from ..graph.trace import Ann, ModuleUse, Tracer


def stored(module: nn.Module, attr: str = "weight") -> torch.Tensor | None:
    """The stored tensor behind ``module.<attr>``: a masked one's original, without computing
    the masked value (shapes and dims are the same)."""
    params = getattr(module, "parametrizations", None)
    if params is not None and attr in params:
        plist = params[attr]
        return getattr(plist, "original", None) if hasattr(plist, "original") else getattr(module, attr)
    return getattr(module, attr, None)


class LayerFamily:
    """Base of the layer families; subclasses set ``name`` and ``types``.

    Attributes:
        name: registry name (``"conv"``, ``"linear"``, ...).
        types: the module classes of the family (subclasses included).
        own_tensors: the parameters and buffers the family's forward reads; a subclass
            that adds others is traced through instead of taken as one step.
        channel_scale: ``weight`` is one scale factor per channel (norm layers), what
            Network Slimming sparsifies.
        follows_input: the layer passes its input's channels on, one to one (norm
            layers, PReLU): it neither creates nor consumes channels.
    """

    name: ClassVar[str]
    types: ClassVar[tuple[type, ...]]
    own_tensors: ClassVar[tuple[str, ...]] = ("weight", "bias")
    size_attrs: ClassVar[tuple[str, ...]] = ()  # what update_attrs changes (saved with pruned models)
    channel_scale: ClassVar[bool] = False
    follows_input: ClassVar[bool] = False  # its output channels are its input's (norms, PReLU)  # its ``weight`` is one scale per channel (norm layers)

    def claims(self, module: nn.Module) -> bool:
        return isinstance(module, self.types)

    def is_plain(self, module: nn.Module) -> bool:
        """Does ``module`` compute exactly what its family's own forward computes?

        A subclass that overrides ``forward`` (timm's ``LayerNorm2d``, ``Conv2dSame``) or
        holds tensors the family does not know is traced op by op instead.
        """
        if type(module).forward not in {t.forward for t in self.base_types()}:
            return False
        own = set(self.own_tensors)
        direct = {n for n, _ in module.named_parameters(recurse=False)} | {n for n, _ in module.named_buffers(recurse=False)}
        return direct <= own | {"num_batches_tracked"}

    def base_types(self) -> tuple[type, ...]:
        """The classes whose ``forward`` is the family's own."""
        return self.types

    # -- channels ------------------------------------------------------------------------
    def weight_dims(self, module: nn.Module) -> tuple[int | None, int | None]:
        """(output-channel dim, input-channel dim) of ``module.weight``; None where the
        weight has no such dim (a depthwise conv has no separate input channels)."""
        return 0, 1

    def out_channel_refusal(self, module: nn.Module) -> str | None:
        """Why this module's output channels cannot be pruned through its weight, or None."""
        return None

    def trace(self, tr: Tracer, module: nn.Module, name: str, x: Any, args: tuple, kwargs: dict,
              out: Any, use: ModuleUse) -> Ann | None:
        """Record the module's channel flow: set ``use.in_ids``/``use.out_ids``, register
        its tensors' dims with ``tr.module_param`` and return the output's annotation."""
        raise NotImplementedError

    def input_channel_dim(self, module: nn.Module, x: torch.Tensor) -> int | None:
        """The dim of the module's input that holds its input channels (for statistics)."""
        return None

    def output_channel_dim(self, module: nn.Module, y: torch.Tensor) -> int:
        """The dim of the module's output that holds its output channels."""
        return 1 if y.dim() > 1 else 0

    # -- shrinking ----------------------------------------------------------------------
    def update_attrs(self, module: nn.Module, n_in: int | None, n_out: int | None) -> None:
        """Update the size attributes after slicing; ``n_in``/``n_out`` are the kept
        channel counts where the trace knows them (None: read them from the tensors)."""

    def fold(self, module: nn.Module, gone: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
        """What removed input channels ``gone`` (indices) carrying the constant ``value``
        (one per channel) add to each output: ``(per-output contribution, exact)``.
        None: this family cannot fold constants at all."""
        return None

    # -- cost ----------------------------------------------------------------------------
    def macs(self, module: nn.Module, args: tuple, out: Any) -> int:
        return 0


class LayerRegistry:
    """Layer families by name; :meth:`family_of` finds the family that claims a module."""

    def __init__(self) -> None:
        self._items: dict[str, LayerFamily] = {}

    def register(self, family: LayerFamily) -> LayerFamily:
        if family.name in self._items:
            raise RuntimeError(f"layer family {family.name!r} is registered twice.")
        self._items[family.name] = family
        return family

    def family_of(self, module: nn.Module) -> LayerFamily | None:
        for family in self._items.values():
            if family.claims(module):
                return family
        return None

    def get(self, name: str) -> LayerFamily:
        if name not in self._items:
            raise KeyError(f"unknown layer family {name!r}{did_you_mean(name, self._items)}; known: {', '.join(self._items)}.")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self) -> Iterator[LayerFamily]:
        return iter(self._items.values())


LAYERS = LayerRegistry()
