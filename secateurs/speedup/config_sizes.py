"""Keep a Hugging Face model's ``config`` telling the truth about the sizes a speedup changed.

A model's ``config`` is shared by all its layers (and written by ``save_pretrained``), while
pruning may leave each layer with its own head count or FFN width. After a speedup:

- a size attribute of the config (``num_attention_heads``, ``n_head``, ``num_key_value_heads``,
  ``intermediate_size`` ...) that every layer now agrees on takes the new value;
- one the layers disagree on keeps the dense value, and ``config.secateurs_sizes`` records
  the per-layer values (``{"num_attention_heads": {"encoder.layer.0.attention.self": 6, ...}}``),
  a plain dict that ``to_dict`` / ``save_pretrained`` write with the config.

Which modules hold a config size: an integer attribute of the same meaning (the head-count
names below) that held the config's dense value; for the FFN width, the layers that mapped
``hidden_size`` to it (``in_features``/``out_features`` of ``nn.Linear``, ``nx``/``nf`` of
``Conv1D``).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

RECORD = "secateurs_sizes"
_HEADS = ("num_attention_heads", "num_heads", "n_head", "n_heads", "num_key_value_heads")
# config attribute -> the module attribute names that hold the same count
_SAME = {name: _HEADS if name != "num_key_value_heads" else ("num_key_value_heads",) for name in _HEADS}
_FFN = ("intermediate_size", "n_inner", "ffn_dim", "dim_feedforward")


def _config(model: nn.Module) -> Any | None:
    config = getattr(model, "config", None)
    return config if callable(getattr(config, "to_dict", None)) else None


def snapshot(model: nn.Module) -> dict[str, dict[str, int]] | None:
    """Every module's integer attributes before the speedup (None: the model has no HF config)."""
    if _config(model) is None:
        return None
    return {name: {k: v for k, v in vars(m).items() if type(v) is int and not k.startswith("_")}
            for name, m in model.named_modules()}


def _ffn_width(module: nn.Module, ints: dict[str, int], hidden: int | None) -> tuple[str, int] | None:
    """The FFN width this layer held before (``hidden -> width``), with the attribute that holds it."""
    for width, into in (("out_features", "in_features"), ("nf", "nx")):
        if width in ints and hidden is not None and ints.get(into) == hidden:
            return width, ints[width]
    return None


def _builds(model: nn.Module, sizes: dict[str, int], layers: dict[str, int]) -> bool:
    """Does the model class, built from the config with ``sizes``, give ``layers`` their pruned
    shapes? (BERT derives the head width from ``hidden_size / num_attention_heads``, so a config
    cannot say "2 heads of 8" at hidden size 32; that count is then only recorded.) Built on the
    meta device: nothing is allocated."""
    import copy

    import torch

    config = copy.deepcopy(model.config)
    for attr, value in sizes.items():
        setattr(config, attr, value)
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception:  # a class that cannot be built from its config alone: nothing is claimed
        return False
    built, pruned = dict(fresh.named_modules()), dict(model.named_modules())
    for name in layers:
        if name not in built:
            return False
        mine = {k: tuple(v.shape) for k, v in pruned[name].named_parameters()}
        theirs = {k: tuple(v.shape) for k, v in built[name].named_parameters()}
        if mine != theirs:
            return False
    return True


def update_config(model: nn.Module, before: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    """Set the config's size attributes the layers now agree on; record the others per layer.

    Modifies ``model.config`` in place. Returns what changed: ``{attr: new value}`` for the
    updated ones and ``{RECORD: {...}}`` for the recorded ones.
    """
    config = _config(model)
    if config is None or before is None:
        return {}
    modules = dict(model.named_modules())
    hidden = getattr(config, "hidden_size", None)
    hidden = hidden if type(hidden) is int else None
    found: dict[str, dict[str, int]] = {}
    for attr in _HEADS + _FFN:
        dense = getattr(config, attr, None)
        if type(dense) is not int:
            continue
        now: dict[str, int] = {}
        for name, ints in before.items():
            module = modules.get(name)
            if module is None:
                continue
            if attr in _FFN:
                held = _ffn_width(module, ints, hidden)
                if held is not None and held[1] == dense:
                    now[name] = int(getattr(module, held[0]))
                continue
            for key in _SAME[attr]:
                if ints.get(key) == dense and type(vars(module).get(key)) is int:
                    now[name] = int(vars(module)[key])
                    break
        if now and any(v != dense for v in now.values()):
            found[attr] = now
    changed: dict[str, Any] = {}
    record = dict(getattr(config, RECORD, None) or {})
    for attr, now in found.items():
        values = set(now.values())
        if len(values) == 1 and _builds(model, {attr: next(iter(values))}, now):
            setattr(config, attr, values.pop())
            changed[attr] = getattr(config, attr)
            record.pop(attr, None)
        else:
            record[attr] = dict(sorted(now.items()))
    if record:
        setattr(config, RECORD, record)
        changed[RECORD] = record
    return changed


def config_sizes(model: nn.Module) -> dict[str, Any]:
    """The config's size attributes and per-layer record, for a pruned-model file."""
    config = _config(model)
    if config is None:
        return {}
    out = {a: getattr(config, a) for a in _HEADS + _FFN if type(getattr(config, a, None)) is int}
    if getattr(config, RECORD, None):
        out[RECORD] = getattr(config, RECORD)
    return out


def restore_config_sizes(model: nn.Module, sizes: dict[str, Any]) -> None:
    """Give a freshly built model's config the saved sizes (the inverse of :func:`config_sizes`)."""
    config = _config(model)
    if config is None:
        return
    for attr, value in sizes.items():
        if attr == RECORD and isinstance(value, dict):
            setattr(config, RECORD, value)
        elif attr in _HEADS + _FFN and type(value) is int and type(getattr(config, attr, None)) is int:
            setattr(config, attr, value)
