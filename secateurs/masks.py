"""Attach, replace and detach masks; save and load them without pickle.

Masks live in ``torch.nn.utils.parametrize`` parametrizations, so the parameter objects
a user's optimizer holds stay the same: the optimizer keeps training the stored weight,
and the module computes with ``weight * mask``. A pruned weight therefore stays zero in
the forward pass however it is trained.

Masks are ``dict[module name, dict[target name, Tensor]]`` with 1 = keep, 0 = pruned,
each tensor of its target's shape. This module stores them as ``torch.bool``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.nn.utils import parametrize

from ._files import read_tagged
from ._gc import no_gc
from .targets import get_module, original_parameter

Masks = dict[str, dict[str, torch.Tensor]]


class MaskDict(dict):
    """Masks as a pruner returns them: a plain ``dict[str, dict[str, Tensor]]`` that also
    carries the channel trace the pruner made (``trace``, or None), so that
    :class:`~secateurs.ModelSpeedup` need not trace the model again when the model and
    example input still match it."""

    trace: Any = None


_FORMAT = "secateurs.masks/1"


class Mask(nn.Module):
    """The parametrization ``weight -> weight * mask``; ``mask`` is a bool buffer.

    The product uses a copy of the mask in the weight's dtype, made once and remade only
    when the mask tensor, its version (an in-place change), the dtype or device, or
    inference mode changes:
    multiplying by a bool tensor converts it on every call, which made a masked training
    step markedly slower than a dense one.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self._factor: tuple[torch.Tensor, tuple, torch.Tensor] | None = None  # (mask, key, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        cached = self._factor
        # A copy made under inference mode cannot take part in autograd later (Lightning
        # validates under inference mode between training rounds): one cache per mode.
        key = (mask._version, x.dtype, x.device, torch.is_inference_mode_enabled())
        if cached is None or cached[0] is not mask or cached[1] != key:
            cached = self._factor = (mask, key, mask.to(dtype=x.dtype, device=x.device))
        return x * cached[2]


def _mask_of(module: nn.Module, target: str) -> Mask | None:
    if not parametrize.is_parametrized(module, target):
        return None
    for p in module.parametrizations[target]:
        if isinstance(p, Mask):
            return p
    return None


def check_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> Masks:
    """Validate masks against a model and return them as bool tensors on the targets' devices.

    Raises:
        TypeError: masks is not a dict of dicts of tensors.
        KeyError: a module or target name does not exist (with close matches).
        ValueError: a mask's shape differs from its target's, or it holds values other than 0/1.
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of module name -> {{target name: tensor}}; got {type(masks).__name__}.")
    out: Masks = {}
    for module_name, targets in masks.items():
        module = get_module(model, module_name)
        if not isinstance(targets, Mapping):
            raise TypeError(f"masks[{module_name!r}] must be a dict of target name -> tensor; got {type(targets).__name__}.")
        out[module_name] = {}
        for target, mask in targets.items():
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"masks[{module_name!r}][{target!r}] must be a tensor; got {type(mask).__name__}.")
            param = original_parameter(module, target)
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(
                    f"masks[{module_name!r}][{target!r}] has shape {tuple(mask.shape)} but "
                    f"{module_name}.{target} has shape {tuple(param.shape)}."
                )
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError(f"masks[{module_name!r}][{target!r}] must hold only 0 and 1.")
                mask = mask != 0
            out[module_name][target] = mask.to(param.device)
    return out


def attach_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Make each target compute as ``target * mask``; a mask already attached is replaced.

    Modifies ``model`` in place: parametrizations are registered on the masked modules.
    Parameter objects are kept, so optimizers built before keep working.
    """
    with no_gc():
        _attach(model, check_masks(model, masks))


@contextmanager
def _grad_accumulators_kept() -> Iterator[None]:
    """Register parametrizations without ``original.set_(original)``.

    ``register_parametrization`` sets the tensor to itself "so that the optimizer keeps
    it"; ``set_`` also gives the parameter a new gradient accumulator, and the hooks that
    DistributedDataParallel put on the old one stop firing: a DDP-wrapped model with masks
    attached after wrapping then fails its next backward ("Expected to have finished
    reduction in the prior iteration"). With no ``right_inverse`` the call is a no-op, so
    it is skipped.
    """
    maybe_set = getattr(parametrize, "_maybe_set", None)
    if maybe_set is None:
        yield
        return

    def skip_self(dest: torch.Tensor, src: torch.Tensor) -> None:
        if dest is not src:
            maybe_set(dest, src)

    parametrize._maybe_set = skip_self
    try:
        yield
    finally:
        parametrize._maybe_set = maybe_set


def _attach(model: nn.Module, masks: Masks) -> None:
    with _grad_accumulators_kept():
        for module_name, targets in masks.items():
            module = get_module(model, module_name)
            for target, mask in targets.items():
                current = _mask_of(module, target)
                if current is not None:
                    current.mask = mask
                else:
                    parametrize.register_parametrization(module, target, Mask(mask), unsafe=True)


def _drop_parametrization(module: nn.Module, target: str, apply: bool) -> None:
    """Remove our mask from ``module.<target>`` without touching the parametrized class.

    ``parametrize.remove_parametrizations`` deletes the property from the module's class,
    which ``copy.deepcopy`` shares between a model and its copy; unwrapping a copy would
    then break the original. This keeps the parameter object and gives the module its
    own class instead.
    """
    plist = module.parametrizations[target]
    if len(plist) != 1:
        raise ValueError(
            f"{type(module).__name__}.{target} has other parametrizations besides its mask; "
            "remove those first."
        )
    original = plist.original
    if apply:
        with torch.no_grad():
            original.mul_(plist[0].mask.to(original.dtype))
    del module.parametrizations[target]
    cls = type(module)
    if len(module.parametrizations) == 0:
        del module._modules["parametrizations"]
        module.__class__ = cls.__bases__[0]
    else:
        skip = {target, "__dict__", "__weakref__"}
        module.__class__ = type(cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items() if k not in skip})
    if isinstance(original, nn.Parameter):
        module.register_parameter(target, original)
    else:
        module.register_buffer(target, original)


def detach_masks(model: nn.Module, apply: bool = True) -> None:
    """Remove every mask from ``model`` in place.

    Args:
        apply: when True (the default) each parameter keeps its masked value (pruned
            entries become zero); when False it gets back its stored, unmasked value.
            The parameter objects are the same before and after.
    """
    with no_gc():
        for module in list(model.modules()):
            if not parametrize.is_parametrized(module):
                continue
            for target in list(module.parametrizations.keys()):
                if _mask_of(module, target) is not None:
                    _drop_parametrization(module, target, apply)


def get_masks(model: nn.Module) -> Masks:
    """The masks attached to ``model`` (the live buffers, not copies)."""
    out: Masks = {}
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for target in module.parametrizations.keys():
            mask = _mask_of(module, target)
            if mask is not None:
                out.setdefault(name, {})[target] = mask.mask
    return out


def save_masks(masks: Mapping[str, Mapping[str, torch.Tensor]], path: str | os.PathLike) -> None:
    """Write masks to a safetensors file (bool tensors plus a JSON index of names)."""
    tensors, index = {}, []
    for module_name, targets in masks.items():
        for target, mask in targets.items():
            key = str(len(index))
            index.append([module_name, target])
            tensors[key] = (mask != 0).contiguous().cpu()
    save_file(tensors, os.fspath(path), metadata={"format": _FORMAT, "index": json.dumps(index)})


def load_masks(path: str | os.PathLike) -> Masks:
    """Read masks written by :func:`save_masks`. Runs no code from the file.

    Raises:
        ValueError: the file is not a safetensors file written by :func:`save_masks`.
    """
    path = os.fspath(path)
    index, tensors = read_tagged(path, _FORMAT, "masks file", "index")
    if (
        not isinstance(index, list)
        or len(index) != len(tensors)
        or not all(isinstance(e, list) and len(e) == 2 and all(isinstance(n, str) for n in e) for e in index)
        or set(tensors) != {str(i) for i in range(len(index))}
    ):
        raise ValueError(f"{path!r} has a damaged index: it must name one [module, target] pair per tensor.")
    out: Masks = {}
    for key, (module_name, target) in enumerate(index):
        mask = tensors[str(key)]
        if mask.dtype != torch.bool:
            raise ValueError(f"{path!r}: mask for {module_name}.{target} is {mask.dtype}, expected bool.")
        out.setdefault(module_name, {})[target] = mask
    return out


def _mask_grad(factor: torch.Tensor, param: torch.Tensor) -> None:
    if param.grad is not None:
        param.grad.mul_(factor)


# Optimizers whose update of an entry is exactly zero when its gradient, its weight and its
# state (moments, accumulators) are zero: with these, entries held at zero stay zero, and the
# zeroing after each step can be skipped. The Adam family divides by sqrt(v) + eps, so only
# with eps > 0.
_ZERO_KEEPING = {torch.optim.SGD: None, torch.optim.Adam: "eps", torch.optim.AdamW: "eps",
                 torch.optim.Adagrad: "eps", torch.optim.RMSprop: "eps", torch.optim.Adamax: "eps",
                 torch.optim.NAdam: "eps", torch.optim.RAdam: "eps", torch.optim.Adadelta: "eps"}


def _keeps_zeros(optimizer: Any) -> bool:
    eps = _ZERO_KEEPING.get(type(optimizer), False)  # the exact class: a subclass may do anything
    if eps is False:
        return False
    return eps is None or all(float(g.get(eps, 0.0)) > 0 for g in optimizer.param_groups)


class MaskedInPlace:
    """Train a masked model at the cost of a dense one: while active, the masks are taken
    off and the pruned entries of each masked parameter are held at zero in place.

    The parametrizations' multiply (a new weight tensor in every forward, and its
    backward) made a masked training step markedly slower than a dense one. Inside this
    context each masked parameter is the module's weight itself, with its pruned entries
    zero, and its gradient is masked as soon as it is accumulated (so gradient clipping
    and norms see what they would see with the mask attached). The forward pass and the
    kept entries' gradients are those of the attached masks, so the kept weights train
    identically. On exit the masks are attached again, with the stored values of pruned
    entries left at zero.

    An optimizer's momentum or decay could still move a pruned entry, so
    :meth:`after_step` zeroes them again after each optimizer step. When every optimizer
    that trains the model is given and is one whose update is exactly zero for an entry
    whose gradient, weight and state are zero (torch's SGD, Adam, AdamW, Adagrad, RMSprop,
    Adamax, NAdam, RAdam, Adadelta, with ``eps > 0``), the pruned entries of its state are
    zeroed once instead and :meth:`after_step` has nothing to do.

    Pruners use it around the training they drive; a user's own loop can too::

        with MaskedInPlace(model) as masked:
            ...  # loss.backward(); optimizer.step(); masked.after_step()

    Args:
        model: a model with masks attached (by a pruner or :func:`attach_masks`).
        optimizers: the optimizers that train it, when known (None: unknown).
    """

    def __init__(self, model: nn.Module, optimizers: list[torch.optim.Optimizer] | None = None) -> None:
        self.model = model
        self.masks: Masks = {}
        self.optimizers = list(optimizers) if optimizers is not None else None
        self.rezero = self.optimizers is None or not all(_keeps_zeros(o) for o in self.optimizers)
        self._held: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles: list[Any] = []
        self.active = False

    def __enter__(self) -> MaskedInPlace:
        if self.active:
            raise RuntimeError("MaskedInPlace is already active.")
        self.masks = {m: dict(t) for m, t in get_masks(self.model).items()}
        detach_masks(self.model, apply=True)
        self.active = True
        self._hold()
        return self

    def _hold(self) -> None:
        for module_name, targets in self.masks.items():
            module = get_module(self.model, module_name)
            for target, mask in targets.items():
                tensor = getattr(module, target)
                factor = mask.to(dtype=tensor.dtype, device=tensor.device)
                self._held.append((tensor, factor))
                if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                    self._handles.append(tensor.register_post_accumulate_grad_hook(partial(_mask_grad, factor)))
        if not self.rezero:
            self._zero_state()

    @torch.no_grad()
    def _zero_state(self) -> None:
        """Zero the pruned entries of every optimizer state tensor of a held parameter's shape."""
        factors = {id(t): f for t, f in self._held}
        for optimizer in self.optimizers or ():
            for param, state in optimizer.state.items():
                factor = factors.get(id(param))
                if factor is None:
                    continue
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == factor.shape:
                        value.mul_(factor.to(value.dtype))

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._held = [], []

    @torch.no_grad()
    def after_step(self) -> None:
        """Zero the pruned entries again (call after every optimizer step); nothing to do
        when the optimizers are known to keep them at zero."""
        if not self.rezero:
            return
        for tensor, factor in self._held:
            tensor.mul_(factor)

    def update(self, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Hold these masks from now on (they replace the held ones; a pruner's new round)."""
        if not self.active:
            raise RuntimeError("MaskedInPlace.update: not active.")
        checked = check_masks(self.model, masks)
        self._release()
        self.masks = {m: dict(t) for m, t in checked.items()}
        self._hold()
        with torch.no_grad():
            for tensor, factor in self._held:
                tensor.mul_(factor)

    def __exit__(self, *exc: Any) -> None:
        if not self.active:
            return
        self._release()
        self.active = False
        attach_masks(self.model, self.masks)
