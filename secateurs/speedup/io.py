"""Save and load a sped-up (shrunk) model without pickle.

The file is one safetensors file: the state dict, plus a JSON description in its
metadata of every module's class, size attributes (``in_channels``, ``num_features`` ...,
and the integers of other modules, such as an attention module's head count) and tensor
shapes. Loading takes a fresh instance of the original architecture, gives
its modules those sizes, then loads the tensors. Nothing in the file is executed.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .._files import read_tagged
from ..targets import module_type_name
from ..layers import LAYERS
from .config_sizes import config_sizes, restore_config_sizes

_FORMAT = "secateurs.pruned-model/1"


def _describe(model: nn.Module) -> dict:
    modules = {}
    for name, module in model.named_modules():
        attrs = {}
        family = LAYERS.family_of(module)
        for attr in family.size_attrs if family is not None else ():
            value = getattr(module, attr, None)
            if isinstance(value, (int, tuple)) and not isinstance(value, bool):
                attrs[attr] = list(value) if isinstance(value, tuple) else value
        # Other modules' integers: head counts and widths the speedup changed (num_heads, split_size).
        ints = {k: v for k, v in vars(module).items() if type(v) is int and not k.startswith("_")} \
            if family is None else {}
        tensors = {k: list(v.shape) for k, v in module._parameters.items() if v is not None}
        buffers = {k: list(v.shape) for k, v in module._buffers.items() if v is not None}
        if attrs or tensors or buffers or ints:
            modules[name] = {"type": module_type_name(module), "attrs": attrs, "parameters": tensors,
                             "buffers": buffers, **({"ints": ints} if ints else {})}
    return modules


def save_pruned_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s shapes and tensors to ``path`` (safetensors + JSON metadata).

    Masks must be detached first (``ModelSpeedup`` does that).
    """
    from ..masks import get_masks

    if get_masks(model):
        raise ValueError("save_pruned_model: the model still has masks attached; run ModelSpeedup or unwrap_model first.")
    meta = {"format": _FORMAT, "modules": json.dumps(_describe(model)),
            "config_sizes": json.dumps(config_sizes(model))}
    save_model(model, os.fspath(path), metadata=meta)


def load_pruned_model(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Resize a fresh instance of the original architecture to the saved shapes, then load
    the saved tensors into it. Modifies ``model`` in place and returns it.

    Raises:
        ValueError: the file is not a pruned-model file, or its modules do not match the
            model's (a missing module or a different class is named).
    """
    path = os.fspath(path)
    modules, _ = read_tagged(path, _FORMAT, "pruned-model file", "modules", tensors=False)
    present = dict(model.named_modules())
    for name, spec in modules.items():
        module = present.get(name)
        if module is None:
            raise ValueError(f"{path!r} describes module {name!r}, which {type(model).__name__} does not have.")
        if module_type_name(module) != spec.get("type"):
            raise ValueError(
                f"{path!r}: module {name!r} is {spec.get('type')} in the file but {module_type_name(module)} here."
            )
        family = LAYERS.family_of(module)
        for attr, value in spec.get("attrs", {}).items():
            if family is not None and attr in family.size_attrs:
                setattr(module, attr, tuple(value) if isinstance(value, list) else int(value))
        for attr, value in spec.get("ints", {}).items():  # only integers the module already holds
            if family is None and type(vars(module).get(attr)) is int and type(value) is int:
                setattr(module, attr, value)
        for kind in ("parameters", "buffers"):
            store = module._parameters if kind == "parameters" else module._buffers
            for key, shape in spec.get(kind, {}).items():
                old = store.get(key)
                if old is not None and list(old.shape) == shape:
                    continue
                if old is None and key not in store:
                    continue  # not a slot of this module: load_model names it as unexpected
                like = old if old is not None else next(iter(module.parameters()), torch.empty(0))
                new = torch.empty(shape, dtype=like.dtype, device=like.device)
                # A bias the speedup created (folding into a bias=False layer) fills the empty slot.
                store[key] = nn.Parameter(new, requires_grad=like.requires_grad) if kind == "parameters" else new
    missing, unexpected = load_model(model, path, strict=False)
    with safe_open(path, framework="pt") as f:  # a Hugging Face config's pruned sizes (absent in older files)
        sizes = (f.metadata() or {}).get("config_sizes")
    if sizes is not None:
        try:
            restore_config_sizes(model, json.loads(sizes))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path!r} has a damaged 'config_sizes' entry: {err}") from None
    if missing or unexpected:
        raise ValueError(f"{path!r} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
    return model
