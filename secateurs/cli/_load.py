"""What the command reads: models from a spec, example inputs, weights, user callables, configs.

Every problem with the user's input raises :class:`UsageError` (exit status 2) with one
line that names the file, the spec or the key that is wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._errors import did_you_mean

MANIFEST = "secateurs.json"
MANIFEST_FORMAT = "secateurs.cli-run/1"
MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"


class UsageError(Exception):
    """Bad usage or input: the command prints the message and exits with status 2."""


class CommandFailed(Exception):
    """The command ran but could not do what was asked: status 1, one line."""


@dataclass
class LoadedModel:
    """A model built from a spec, with the example input it runs on.

    Attributes:
        model: the module, in eval mode.
        example: the example input (a tensor, a tuple of positional inputs or a dict).
        source: how to build it again (written into a run folder's manifest):
            ``{"model": spec, "weights": path or None, "input": {...}}``.
        state: "dense", "masked" (a run folder without speedup) or "sped-up".
        masks: the masks of a run folder, when it has them.
        folder: the run folder the model came from, if any.
    """

    model: nn.Module
    example: Any
    source: dict[str, Any]
    state: str = "dense"
    masks: dict | None = None
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)


# -- user callables ---------------------------------------------------------------------


def _import_file(path: Path) -> Any:
    name = f"_secateurs_user_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{str(path)!r} cannot be imported as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The user's own module: its folder is importable for its siblings, as `python file.py` would be.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def split_callable_spec(spec: str) -> tuple[str, str]:
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr or not attr.replace("_", "a").replace(".", "a").isalnum():
        raise UsageError(f"{spec!r} is not 'module:function' or 'path/to/file.py:function'.")
    return where, attr


def load_callable(spec: str, what: str) -> Callable:
    """``package.module:function`` or ``path/to/file.py:function`` -> the callable."""
    where, attr = split_callable_spec(spec)
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"{what} {spec!r}: no such file {where!r}.")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise UsageError(f"{what} {spec!r}: no module named {err.name!r}.") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise UsageError(f"{what} {spec!r}: {where!r} has no attribute {part!r}{did_you_mean(part, names)}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{what} {spec!r} is a {type(obj).__name__}, not a function.")
    return obj


def absolute_spec(spec: str) -> str:
    """The same spec with a file path made absolute, so that a run folder works from elsewhere."""
    if spec.startswith("hf:"):
        return "hf:" + str(Path(spec[3:]).resolve())
    if ":" in spec and not spec.startswith(("torchvision:", "timm:")):
        where, attr = spec.rsplit(":", 1)
        if where.endswith(".py") or os.sep in where:
            return f"{Path(where).resolve()}:{attr}"
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    return spec


# -- example inputs ---------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers such as 1,3,224,224.") from None
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape {text!r}: every size must be an integer >= 1.")
    return shape


def _random_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _hf_input(model: nn.Module, shape: tuple[int, ...] | None) -> dict[str, torch.Tensor]:
    config = model.config
    if hasattr(config, "image_size") and hasattr(config, "num_channels"):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        shape = shape or (1, config.num_channels, size, size)
        return {"pixel_values": _random_input(shape)}
    shape = shape or (1, 16)
    if len(shape) != 2:
        raise UsageError(f"--input-shape for a Hugging Face text model is batch,sequence (such as 1,16); got {shape}.")
    vocab = int(getattr(config, "vocab_size", 1000))
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
    example: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones(shape, dtype=torch.long)}
    if getattr(config, "use_cache", False):
        example["use_cache"] = False  # a key/value cache is not an output that pruning can check
    return example


def _default_shape(kind: str, name: str, model: nn.Module) -> tuple[int, ...] | None:
    if kind == "torchvision":
        return (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)
    if kind == "timm":
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        return (1, *size) if size else (1, 3, 224, 224)
    return None


# -- models -----------------------------------------------------------------------------


def _torchvision(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise UsageError("torchvision:... models need torchvision (pip install torchvision).") from None
    names = torchvision.models.list_models()
    if name not in names:
        raise UsageError(f"torchvision has no model {name!r}{did_you_mean(name, names)}.")
    return torchvision.models.get_model(name, weights=None)


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UsageError("timm:... models need timm (pip install timm).") from None
    names = timm.list_models()
    if name not in names:
        raise UsageError(f"timm has no model {name!r}{did_you_mean(name, names)}.")
    return timm.create_model(name, pretrained=False)


def _hf(path: str) -> nn.Module:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UsageError(f"hf:{path}: not a Hugging Face model folder (no config.json in {path!r}).")
    try:
        import transformers
    except ImportError:
        raise UsageError("hf:... models need transformers (pip install transformers).") from None
    transformers.utils.logging.disable_progress_bar()  # the command shows its own progress
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    cls = transformers.AutoModel
    for arch in getattr(config, "architectures", None) or []:
        if hasattr(transformers, arch):
            cls = getattr(transformers, arch)
            break
    return cls.from_pretrained(folder, local_files_only=True)


def _factory(spec: str, shape: tuple[int, ...] | None) -> tuple[nn.Module, Any]:
    made = load_callable(spec, "model factory")()
    example = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        made, example = made
    if not isinstance(made, nn.Module):
        raise UsageError(f"model factory {spec!r} returned {type(made).__name__}, not a torch.nn.Module "
                         "(or a (module, example_input) pair).")
    if shape is not None:
        example = _random_input(shape)
    return made, example


def load_weights(model: nn.Module, path: str) -> None:
    """Load a safetensors file or a state dict (``torch.load(weights_only=True)``) into ``model``."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--weights {path!r}: no such file.")
    with open(file, "rb") as f:
        head = f.read(8)
    is_safetensors = file.suffix == ".safetensors" or (len(head) == 8 and int.from_bytes(head, "little") < 1 << 27
                                                      and not head.startswith(b"PK"))
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise UsageError(f"--weights {path!r} is not a readable state dict: {str(err).splitlines()[0]}") from None
    for key in ("state_dict", "model"):  # a checkpoint that nests its state dict
        if isinstance(state, dict) and set(state) >= {key} and isinstance(state[key], dict) and \
                not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path!r} does not hold a state dict (names -> tensors).")
    missing, unexpected = [], []
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(wrong)))
                 if names]
        raise UsageError(f"--weights {path!r} does not fit {type(model).__name__}: " + "; ".join(parts) + ".")
    model.load_state_dict(state)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{str(folder)!r} is not a secateurs run folder ({MANIFEST}: {err}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UsageError(f"{str(path)!r} is not a secateurs run manifest (format {manifest.get('format')!r}, "
                         f"expected {MANIFEST_FORMAT!r}).")
    return manifest


def _example_from(source: dict[str, Any], model: nn.Module, kind: str, name: str) -> Any:
    spec = source.get("input") or {}
    if spec.get("factory"):
        return load_callable(spec["factory"], "--input")()
    shape = tuple(spec["shape"]) if spec.get("shape") else None
    if kind == "hf":
        return _hf_input(model, shape)
    shape = shape or _default_shape(kind, name, model)
    return None if shape is None else _random_input(shape)


def _build(source: dict[str, Any]) -> tuple[nn.Module, Any]:
    spec = source["model"]
    shape = tuple(source["input"]["shape"]) if (source.get("input") or {}).get("shape") else None
    kind, _, name = spec.partition(":")
    if kind == "torchvision":
        model, example = _torchvision(name), None
    elif kind == "timm":
        model, example = _timm(name), None
    elif kind == "hf":
        model, example = _hf(name), None
    else:
        kind = "factory"
        model, example = _factory(spec, shape)
    if source.get("weights"):
        load_weights(model, source["weights"])
    model.eval()
    if (source.get("input") or {}).get("factory") or example is None:
        example = _example_from(source, model, kind, name)
    return model, example


def load_model(spec: str, weights: str | None = None, input_shape: str | None = None,
               input_factory: str | None = None) -> LoadedModel:
    """Build the model that ``spec`` names (see docs/cli.md, "Models") with its example input."""
    if not isinstance(spec, str) or not spec:
        raise UsageError("a MODEL is needed: torchvision:NAME, timm:NAME, hf:PATH, file.py:factory, "
                         "package.module:factory, or a folder written by `secateurs prune`.")
    folder = Path(spec)
    if folder.is_dir():
        if (folder / MANIFEST).is_file():
            return _load_folder(folder, weights, input_shape, input_factory)
        if (folder / "config.json").is_file():
            spec = "hf:" + spec
        else:
            raise UsageError(f"{spec!r} is a folder, but neither a secateurs run folder ({MANIFEST}) "
                             "nor a Hugging Face model folder (config.json).")
    if ":" not in spec:
        raise UsageError(f"MODEL {spec!r} is not torchvision:NAME, timm:NAME, hf:PATH, file.py:factory, "
                         "package.module:factory, or an existing folder.")
    kind = spec.partition(":")[0]
    if kind not in ("torchvision", "timm", "hf"):
        where, _ = split_callable_spec(spec)
        if (where.endswith(".py") or os.sep in where) and not Path(where).is_file():
            raise UsageError(f"model factory {spec!r}: no such file {where!r}.")
    elif kind == "hf" and not (Path(spec[3:]) / "config.json").is_file():
        raise UsageError(f"{spec}: not a Hugging Face model folder (no config.json in {spec[3:]!r}).")
    source = {"model": absolute_spec(spec), "weights": str(Path(weights).resolve()) if weights else None,
              "input": {"shape": list(parse_shape(input_shape)) if input_shape else None,
                        "factory": absolute_spec(input_factory) if input_factory else None}}
    model, example = _build(source)
    if example is None:
        raise UsageError(f"{spec!r} has no known example input: give --input-shape (such as 1,3,224,224) "
                         "or --input module:function.")
    check_runs(model, example, spec)
    return LoadedModel(model, example, source)


def describe_input(example: Any) -> str:
    if isinstance(example, torch.Tensor):
        return "x".join(map(str, example.shape))
    if isinstance(example, dict):
        return ", ".join(f"{k}: {describe_input(v)}" for k, v in example.items())
    if isinstance(example, (tuple, list)):
        return "(" + ", ".join(describe_input(v) for v in example) + ")"
    return type(example).__name__


def check_runs(model: nn.Module, example: Any, spec: str) -> None:
    """The model must run on its example input before anything else is done with it."""
    try:
        with torch.no_grad():
            call_model(model, example)
    except Exception as err:  # noqa: BLE001 - any failure here is a wrong input for this model
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"{spec!r} does not run on the example input ({describe_input(example)}): "
                         f"{type(err).__name__}: {first}; give the right --input-shape or --input.") from None


def _load_folder(folder: Path, weights: str | None, input_shape: str | None,
                 input_factory: str | None) -> LoadedModel:
    from ..masks import load_masks
    from ..speedup import load_pruned_model

    manifest = read_manifest(folder)
    if weights:
        raise UsageError(f"{str(folder)!r} is a run folder: its weights are its own {MODEL_FILE}; drop --weights.")
    source = dict(manifest["source"])
    source["weights"] = None  # the folder's model file holds every tensor
    if input_shape or input_factory:
        source["input"] = {"shape": list(parse_shape(input_shape)) if input_shape else None,
                           "factory": absolute_spec(input_factory) if input_factory else None}
    model, example = _build(source)
    state = manifest.get("state")
    model_file = folder / MODEL_FILE
    if state == "sped-up":
        load_pruned_model(model, model_file)
    elif state == "masked":  # full-size tensors, the pruned ones zero (safetensors' save_model)
        from safetensors.torch import load_model as load_safetensors

        try:
            load_safetensors(model, str(model_file), strict=True)
        except (OSError, RuntimeError) as err:
            raise UsageError(f"{str(model_file)!r} does not fit the model: {str(err).splitlines()[0]}") from None
    else:
        raise UsageError(f"{str(folder / MANIFEST)!r}: unknown state {state!r}.")
    masks = load_masks(folder / MASKS_FILE) if (folder / MASKS_FILE).is_file() else None
    model.eval()
    check_runs(model, example, str(folder))
    source["weights"] = manifest["source"].get("weights")
    return LoadedModel(model, example, source, state=state, masks=masks, folder=folder)


def call_model(model: nn.Module, example: Any) -> Any:
    """Run ``model`` on ``example`` the way the library does (dict -> keywords, tuple -> positional)."""
    from ..graph.trace import call_with

    return call_with(model, example)


def read_config_file(path: str) -> list[dict[str, Any]]:
    """A config_list from a YAML or JSON file; errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path!r}: no such file.")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"--config {path!r} is YAML, which needs PyYAML (pip install pyyaml).") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"--config {path!r} is not valid YAML: {' '.join(str(err).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--config {path!r} is not valid JSON: {err}") from None
    if isinstance(data, dict) and "config_list" in data:
        data = data["config_list"]
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise UsageError(f"--config {path!r} must hold a list of config entries (mappings), "
                         f"or a mapping with a 'config_list' key; got {type(data).__name__}.")
    return data
