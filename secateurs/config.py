"""config_list: schema, validation, NNI 2.x key translation, resolution to per-module settings.

A config_list is a list of dicts in NNI 3.0's schema, so configs written for NNI work
unchanged. Each dict selects modules (``op_types``, ``op_names``, ``op_names_re`` and their
``exclude_`` forms) and says how to prune them (``sparse_ratio`` ...). When several configs
select the same module, the later one wins; a config with ``exclude: True`` (NNI 2.x)
removes the modules it selects from those chosen before it.

Every error names the config's index, the key, the value and what is allowed::

    config_list[1]: 'sparse_ratio' must be a number in [0, 1); got 1.5.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch.nn as nn

from ._errors import did_you_mean
from .targets import module_type_name, select_modules

Granularity = Union[str, tuple[int, ...]]

SELECTOR_KEYS = (
    "op_types",
    "op_names",
    "op_names_re",
    "exclude_op_names",
    "exclude_op_names_re",
    "exclude_op_types",
)
SETTING_KEYS = (
    "sparse_ratio",
    "sparse_threshold",
    "min_sparse_ratio",
    "max_sparse_ratio",
    "global_group_id",
    "dependency_group_id",
    "granularity",
    "target_names",
)
NNI2_KEYS = (
    "sparsity",
    "sparsity_per_layer",
    "total_sparsity",
    "max_sparsity_per_layer",
    "op_partial_names",
    "exclude",
)
GRANULARITY_NAMES = ("default", "out_channel", "in_channel", "per_channel")


@dataclass(frozen=True)
class ModuleSetting:
    """How one selected module is pruned, after all configs are applied.

    Attributes:
        module_name: fully qualified name, as in ``model.named_modules()``.
        module_type: the module's class name.
        config_index: index in config_list of the config that chose this module.
        target_names: parameter names to prune; ``None`` means the pruner's default.
        sparse_ratio / sparse_threshold: exactly one is set (unless the pruner needs none).
        min_sparse_ratio / max_sparse_ratio: per-module bounds; ``None`` when not given.
        global_group_id / dependency_group_id: group ids, ``None`` when not given.
        granularity: a name from GRANULARITY_NAMES or a tuple of block sizes.
        extras: validated pruner-specific keys (for example ADMM's ``rho``).
    """

    module_name: str
    module_type: str
    config_index: int
    target_names: tuple[str, ...] | None = None
    sparse_ratio: float | None = None
    sparse_threshold: float | None = None
    min_sparse_ratio: float | None = None
    max_sparse_ratio: float | None = None
    global_group_id: int | str | None = None
    dependency_group_id: int | str | None = None
    granularity: Granularity = "default"
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigSchema:
    """What a pruner accepts in its config_list.

    Attributes:
        owner: the pruner's class name, used in messages.
        default_op_types: class names that ``op_types: ['default']`` stands for.
        requires_sparsity: whether each (non-exclude) config must give a ratio or threshold.
        extra_keys: pruner-specific key -> validator returning None when the value is
            fine, else (exception class, text saying what is allowed).
    """

    owner: str
    default_op_types: tuple[str, ...] = ("Conv1d", "Conv2d", "Conv3d", "Linear")
    requires_sparsity: bool = True
    extra_keys: Mapping[str, Callable[[Any], tuple[type[Exception], str] | None]] = field(
        default_factory=dict
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_or_value(value: Any) -> type[Exception]:
    """TypeError for a value that is not a number at all, ValueError for nan/inf."""
    return ValueError if isinstance(value, (int, float)) and not isinstance(value, bool) else TypeError


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)


def _is_group_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _fail(index: int, key: str, allowed: str, value: Any, exc: type[Exception] = ValueError):
    raise exc(f"config_list[{index}]: {key!r} must be {allowed}; got {value!r}.")


def _check_ratio(index: int, key: str, value: Any, upper_open: bool) -> float:
    bracket = ")" if upper_open else "]"
    allowed = f"a number in [0, 1{bracket}"
    if not _is_number(value):
        _fail(index, key, allowed, value, _type_or_value(value))
    if value < 0 or value > 1 or (upper_open and value == 1):
        _fail(index, key, allowed, value)
    return float(value)


def _check_names(index: int, key: str, value: Any) -> tuple[str, ...]:
    if not _is_str_list(value):
        _fail(index, key, "a list of non-empty strings", value, TypeError)
    if key.endswith("_re"):
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                _fail(index, key, f"a list of valid regular expressions ({err})", value)
    return tuple(value)


def _check_granularity(index: int, value: Any) -> Granularity:
    if isinstance(value, str):
        if value not in GRANULARITY_NAMES:
            raise ValueError(
                f"config_list[{index}]: 'granularity' must be one of {GRANULARITY_NAMES} "
                f"or a list of block sizes; got {value!r}{did_you_mean(value, GRANULARITY_NAMES)}."
            )
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in value)
    ):
        return tuple(value)
    _fail(
        index,
        "granularity",
        f"one of {GRANULARITY_NAMES} or a non-empty list of block sizes (ints >= 1, or -1 for a whole dim)",
        value,
        TypeError if not isinstance(value, (list, tuple)) else ValueError,
    )


def translate_nni2(config: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Rewrite NNI 2.x keys into NNI 3.0 keys; the input is not modified.

    ``sparsity``/``sparsity_per_layer`` -> ``sparse_ratio``; ``total_sparsity`` ->
    ``sparse_ratio`` plus a global group of its own; ``max_sparsity_per_layer`` ->
    ``max_sparse_ratio``; ``op_partial_names`` -> ``op_names_re`` (substring match).
    ``exclude`` is kept: resolution handles it.
    """
    out = dict(config)
    ratio_keys = [k for k in ("sparsity", "sparsity_per_layer", "total_sparsity", "sparse_ratio") if k in out]
    if len(ratio_keys) > 1:
        raise ValueError(
            f"config_list[{index}]: give only one of {ratio_keys}; they all set the sparse ratio."
        )
    for old in ("sparsity", "sparsity_per_layer"):
        if old in out:
            out["sparse_ratio"] = out.pop(old)
    if "total_sparsity" in out:
        out["sparse_ratio"] = out.pop("total_sparsity")
        if "global_group_id" in out:
            raise ValueError(
                f"config_list[{index}]: 'total_sparsity' already makes a global group; "
                "do not give 'global_group_id' with it."
            )
        out["global_group_id"] = f"__total_sparsity_{index}"
    if "max_sparsity_per_layer" in out:
        if "max_sparse_ratio" in out:
            raise ValueError(
                f"config_list[{index}]: give only one of 'max_sparsity_per_layer' and 'max_sparse_ratio'."
            )
        value = out.pop("max_sparsity_per_layer")
        if isinstance(value, Mapping):
            raise TypeError(
                f"config_list[{index}]: 'max_sparsity_per_layer' must be a number; got a dict "
                f"{dict(value)!r}. Write one config per module with 'max_sparse_ratio' instead."
            )
        out["max_sparse_ratio"] = value
    if "op_partial_names" in out:
        partial = _check_names(index, "op_partial_names", out.pop("op_partial_names"))
        out["op_names_re"] = list(out.get("op_names_re", ())) + [".*" + re.escape(p) for p in partial]
    return out


_NNI2_TARGET = {"sparsity": "sparse_ratio", "sparsity_per_layer": "sparse_ratio", "total_sparsity": "sparse_ratio",
                "max_sparsity_per_layer": "max_sparse_ratio"}


def validate_config(config: Any, index: int, schema: ConfigSchema) -> dict[str, Any]:
    """Check one config dict and return it translated and normalised.

    Errors about a translated NNI 2.x key name the key as the user wrote it.

    Raises:
        TypeError: a value has the wrong type (the message names key, value, allowed).
        ValueError: an unknown key, an out-of-range value or a contradiction.
    """
    try:
        return _validate_config(config, index, schema)
    except (TypeError, ValueError) as err:
        text = str(err)
        if isinstance(config, Mapping):
            for old, new in _NNI2_TARGET.items():
                # Only a message about the translated key, in words the user did not write: one
                # that names the user's key already (or the new key they also gave) stays as it is.
                if old in config and new not in config and repr(old) not in text and repr(new) in text:
                    text = text.replace(repr(new), f"{old!r} (NNI 2.x; read as {new!r})")
        if text == str(err):
            raise
        raise type(err)(text) from None


def _validate_config(config: Any, index: int, schema: ConfigSchema) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise TypeError(f"config_list[{index}] must be a dict; got {type(config).__name__} {config!r}.")
    known = SELECTOR_KEYS + SETTING_KEYS + NNI2_KEYS + tuple(schema.extra_keys)
    for key in config:
        if not isinstance(key, str):
            raise TypeError(f"config_list[{index}]: keys must be strings; got {key!r}.")
        if key not in known:
            raise ValueError(
                f"config_list[{index}]: unknown key {key!r} for {schema.owner}{did_you_mean(key, known)}. "
                f"Allowed keys: {', '.join(sorted(known))}."
            )
    cfg = translate_nni2(config, index)
    out: dict[str, Any] = {}
    exclude = cfg.get("exclude", False)
    if not isinstance(exclude, bool):
        _fail(index, "exclude", "True or False", exclude, TypeError)
    out["exclude"] = exclude

    for key in SELECTOR_KEYS:
        if key in cfg:
            out[key] = _check_names(index, key, cfg[key])
    if not any(k in out for k in ("op_types", "op_names", "op_names_re")):
        raise ValueError(
            f"config_list[{index}]: selects nothing; give at least one of 'op_types', "
            f"'op_names' or 'op_names_re' (or NNI 2.x 'op_partial_names'); got keys {sorted(config)}."
        )
    if exclude:
        settings = [k for k in cfg if k in SETTING_KEYS or k in schema.extra_keys]
        if settings:
            raise ValueError(
                f"config_list[{index}]: an 'exclude' config only selects modules to leave alone; "
                f"it cannot also set {settings}."
            )
        return out

    if "sparse_ratio" in cfg and "sparse_threshold" in cfg:
        raise ValueError(
            f"config_list[{index}]: give 'sparse_ratio' or 'sparse_threshold', not both; "
            f"got sparse_ratio={cfg['sparse_ratio']!r} and sparse_threshold={cfg['sparse_threshold']!r}."
        )
    if "sparse_ratio" in cfg:
        out["sparse_ratio"] = _check_ratio(index, "sparse_ratio", cfg["sparse_ratio"], upper_open=True)
    if "sparse_threshold" in cfg:
        value = cfg["sparse_threshold"]
        if not _is_number(value):
            _fail(index, "sparse_threshold", "a finite number", value, _type_or_value(value))
        out["sparse_threshold"] = float(value)
    if schema.requires_sparsity and "sparse_ratio" not in out and "sparse_threshold" not in out:
        raise ValueError(
            f"config_list[{index}]: {schema.owner} needs 'sparse_ratio' (or 'sparse_threshold', or "
            f"NNI 2.x 'sparsity'/'total_sparsity'); got keys {sorted(config)}."
        )
    for key in ("min_sparse_ratio", "max_sparse_ratio"):
        if key in cfg:
            out[key] = _check_ratio(index, key, cfg[key], upper_open=False)
    low, high = out.get("min_sparse_ratio", 0.0), out.get("max_sparse_ratio", 1.0)
    if low > high:
        raise ValueError(
            f"config_list[{index}]: 'min_sparse_ratio' ({low}) must not exceed 'max_sparse_ratio' ({high})."
        )
    ratio = out.get("sparse_ratio")
    if ratio is not None and not (low <= ratio <= high):
        raise ValueError(
            f"config_list[{index}]: 'sparse_ratio' must lie in [min_sparse_ratio, max_sparse_ratio] = "
            f"[{low}, {high}]; got {ratio}."
        )
    for key in ("global_group_id", "dependency_group_id"):
        if key in cfg:
            if not _is_group_id(cfg[key]):
                _fail(index, key, "an int or a str", cfg[key], TypeError)
            out[key] = cfg[key]
    if "granularity" in cfg:
        out["granularity"] = _check_granularity(index, cfg["granularity"])
        if out["granularity"] == "per_channel" and "global_group_id" in out:
            raise ValueError(
                f"config_list[{index}]: 'granularity' 'per_channel' ranks inside each output channel "
                "and cannot be combined with 'global_group_id'."
            )
    if "target_names" in cfg:
        out["target_names"] = _check_names(index, "target_names", cfg["target_names"])
    for key, check in schema.extra_keys.items():
        if key in cfg:
            problem = check(cfg[key])
            if problem is not None:
                exc, allowed = problem
                _fail(index, key, allowed, cfg[key], exc)
            out[key] = cfg[key]
    return out


def validate_config_list(config_list: Any, schema: ConfigSchema) -> list[dict[str, Any]]:
    """Validate every config; see :func:`validate_config`."""
    if not isinstance(config_list, Sequence) or isinstance(config_list, (str, bytes)):
        raise TypeError(f"config_list must be a list of dicts; got {type(config_list).__name__}.")
    if not config_list:
        raise ValueError("config_list is empty; it must hold at least one config dict.")
    return [validate_config(c, i, schema) for i, c in enumerate(config_list)]


def resolve(
    model: nn.Module, config_list: Any, schema: ConfigSchema, alias_prefix: str | None = None
) -> dict[str, ModuleSetting]:
    """Validate config_list and decide, for every module, which config prunes it.

    Args:
        alias_prefix: a prefix module names may carry in the configs (``"module."`` for a
            model inside DistributedDataParallel); names are resolved with or without it.

    Returns:
        module name -> ModuleSetting, in ``model.named_modules()`` order.

    Raises:
        TypeError / ValueError: as :func:`validate_config`, and also for a config that
            selects no module, an unknown module name, or a global group whose members
            disagree on their ratio.
    """
    configs = validate_config_list(config_list, schema)
    chosen: dict[str, ModuleSetting] = {}
    for index, cfg in enumerate(configs):
        names = select_modules(model, cfg, index, schema.default_op_types, alias_prefix)
        for name, module in names.items():
            if cfg["exclude"]:
                chosen.pop(name, None)
                continue
            chosen[name] = ModuleSetting(
                module_name=name,
                module_type=module_type_name(module),
                config_index=index,
                target_names=cfg.get("target_names"),
                sparse_ratio=cfg.get("sparse_ratio"),
                sparse_threshold=cfg.get("sparse_threshold"),
                min_sparse_ratio=cfg.get("min_sparse_ratio"),
                max_sparse_ratio=cfg.get("max_sparse_ratio"),
                global_group_id=cfg.get("global_group_id"),
                dependency_group_id=cfg.get("dependency_group_id"),
                granularity=cfg.get("granularity", "default"),
                extras={k: cfg[k] for k in schema.extra_keys if k in cfg},
            )
    if not chosen:
        raise ValueError("config_list selects no module once its 'exclude' configs are applied.")
    _check_groups(chosen)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(chosen.items(), key=lambda item: order[item[0]]))


def _check_groups(chosen: Mapping[str, ModuleSetting]) -> None:
    """Members of a global group must agree on their ratio or threshold. (Dependency
    groups, declared or traced, are checked where they are built: secateurs.pruners.dependency.)"""
    seen: dict[Any, ModuleSetting] = {}
    for setting in chosen.values():
        gid = setting.global_group_id
        if gid is None:
            continue
        first = seen.setdefault(gid, setting)
        if (first.sparse_ratio, first.sparse_threshold) != (setting.sparse_ratio, setting.sparse_threshold):
            raise ValueError(
                f"global_group_id {gid!r}: every member must have the same sparse ratio or threshold; "
                f"config_list[{first.config_index}] gives {first.module_name!r} "
                f"sparse_ratio={first.sparse_ratio}, sparse_threshold={first.sparse_threshold} but "
                f"config_list[{setting.config_index}] gives {setting.module_name!r} "
                f"sparse_ratio={setting.sparse_ratio}, sparse_threshold={setting.sparse_threshold}."
            )
