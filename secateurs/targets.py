"""Which modules and tensors a config selects, addressed by fully qualified name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._errors import did_you_mean

_TORCH_NN_TYPES = frozenset(
    name for name in dir(nn) if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), nn.Module)
)


def module_type_name(module: nn.Module) -> str:
    """The module's class name; a parametrized module reports its original class."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def _named_submodules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module but the root, by name; parametrization internals are skipped."""
    out = {}
    for name, module in model.named_modules():
        if not name or ".parametrizations." in f".{name}." or isinstance(module, parametrize.ParametrizationList):
            continue
        out[name] = module
    return out


def select_modules(
    model: nn.Module,
    cfg: Mapping[str, Any],
    index: int,
    default_op_types: tuple[str, ...],
    alias_prefix: str | None = None,
) -> dict[str, nn.Module]:
    """Return the modules one validated config selects, by name, in model order.

    ``op_types`` and ``op_names``/``op_names_re`` must all match when both are given
    (NNI's rule); ``op_names_re`` patterns are matched from the start of the name
    (``re.match``), as NNI did. ``'default'`` in ``op_types`` stands for the pruner's
    default types.

    Raises:
        ValueError: a named module or op type does not exist in the model (with close
            matches), or the config selects no module at all.
    """
    modules = _named_submodules(model)
    if alias_prefix:
        cfg = dict(cfg)
        for key in ("op_names", "exclude_op_names"):
            if key in cfg:
                cfg[key] = tuple(n[len(alias_prefix):] if n.startswith(alias_prefix) and n not in modules else n
                                 for n in cfg[key])
    for key in ("op_names", "exclude_op_names"):
        for name in cfg.get(key, ()):
            if name not in modules:
                raise ValueError(
                    f"config_list[{index}]: {key!r} names {name!r}, which is not a module of "
                    f"{type(model).__name__}{did_you_mean(name, modules)}."
                )
    known_types = {module_type_name(m) for m in modules.values()} | _TORCH_NN_TYPES
    for key in ("op_types", "exclude_op_types"):
        for op_type in cfg.get(key, ()):
            if op_type == "default" and key == "op_types":
                continue
            if op_type not in known_types:
                raise ValueError(
                    f"config_list[{index}]: {key!r} has unknown op type {op_type!r}; it is neither a "
                    f"torch.nn class nor a class used in the model{did_you_mean(op_type, known_types)}."
                )
    op_types = None
    if "op_types" in cfg:
        op_types = set(cfg["op_types"]) - {"default"}
        if "default" in cfg["op_types"]:
            op_types |= set(default_op_types)
    names = set(cfg.get("op_names", ()))
    patterns = [re.compile(p) for p in cfg.get("op_names_re", ())]
    by_name = "op_names" in cfg or "op_names_re" in cfg
    ex_names = set(cfg.get("exclude_op_names", ()))
    ex_patterns = [re.compile(p) for p in cfg.get("exclude_op_names_re", ())]
    ex_types = set(cfg.get("exclude_op_types", ()))

    selected = {}
    for name, module in modules.items():
        type_name = module_type_name(module)
        if op_types is not None and type_name not in op_types:
            continue
        aliases = (name, alias_prefix + name) if alias_prefix else (name,)
        if by_name and name not in names and not any(p.match(a) for p in patterns for a in aliases):
            continue
        if name in ex_names or type_name in ex_types or any(p.match(a) for p in ex_patterns for a in aliases):
            continue
        selected[name] = module
    if not selected:
        shown = {k: list(v) for k, v in cfg.items() if k != "exclude" and isinstance(v, tuple)}
        raise ValueError(f"config_list[{index}]: selects no module of {type(model).__name__} (selectors {shown}).")
    return selected


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; KeyError with close matches if there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules()]
        raise KeyError(f"{type(model).__name__} has no module {name!r}{did_you_mean(name, names)}.") from None


def original_parameter(module: nn.Module, target: str) -> torch.Tensor:
    """The stored parameter behind ``module.<target>`` (unmasked when a mask is attached)."""
    if parametrize.is_parametrized(module, target):
        return module.parametrizations[target].original
    value = getattr(module, target, None)
    if not isinstance(value, torch.Tensor):
        raise KeyError(f"{module_type_name(module)} has no tensor {target!r}.")
    return value
