"""Checkpoints of long runs: one safetensors file each, written atomically, loaded safely.

A checkpoint holds tensors (parameters, buffers, masks, optimizer state, a pruner's own
state, RNG states) and a JSON description (``meta``) in the safetensors metadata, with a
SHA-256 of the description and every tensor's bytes. Writing goes to a temporary file in the same folder,
which is flushed to disk (``fsync``) and renamed over the final name, so a kill at any
moment leaves the previous complete checkpoint. Loading runs no code from the file
(no pickle) and refuses a file that is truncated, altered, or written for another run
(:func:`load_checkpoint` with ``expect``).

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> path = save_checkpoint(folder, 3, {"w": torch.ones(2)}, {"round": 3, "fingerprint": {"pruner": "agp"}})
    >>> tensors, meta = load_checkpoint(latest_checkpoint(folder), expect={"pruner": "agp"})
    >>> meta["round"], tensors["w"].tolist()
    (3, [1.0, 1.0])
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_FORMAT = "secateurs.checkpoint/1"
_NAME = re.compile(r"^round-(\d{6})\.safetensors$")


class CheckpointMismatch(ValueError):
    """A complete checkpoint that was written for another run (pruner, arguments, model)."""


def _digest(tensors: Mapping[str, torch.Tensor], text: str) -> str:
    """SHA-256 of the description and of every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(text.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(folder: str | os.PathLike, step: int, tensors: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any]) -> Path:
    """Write checkpoint ``step`` into ``folder`` atomically and return its path.

    Args:
        step: the round (or step) the checkpoint ends; files are named ``round-NNNNNN``.
        tensors: str -> tensor (copied to CPU; shared storage is copied apart).
        meta: JSON-able values; ``meta["fingerprint"]`` identifies the run (model, config,
            pruner) for :func:`load_checkpoint`'s ``expect``.

    Raises:
        TypeError: a value of ``meta`` is not JSON-able, or a tensor is not a tensor.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"save_checkpoint: 'step' must be an int >= 0; got {step!r}.")
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_checkpoint: tensors[{key!r}] must be a tensor; got {type(t).__name__}.")
    cpu = {k: t.detach().cpu().clone().contiguous() for k, t in tensors.items()}
    try:
        text = json.dumps(dict(meta), sort_keys=True)
    except TypeError as err:
        raise TypeError(f"save_checkpoint: 'meta' must hold only JSON values: {err}") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round-{step:06d}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata={"format": _FORMAT, "meta": text, "sha256": _digest(cpu, text)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)
    return final


def checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(round, path) of every complete checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def prune_checkpoints(folder: str | os.PathLike, keep: int = 2) -> None:
    """Delete all but the ``keep`` newest checkpoints in ``folder`` (the one before the
    newest stays, to start from should the newest be damaged)."""
    for _, path in checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest round in ``folder``, or None (partial files are ignored)."""
    found = checkpoints(folder)
    return found[-1][1] if found else None


def _differences(expected: Any, found: Any, path: str = "") -> list[str]:
    if isinstance(expected, Mapping) and isinstance(found, Mapping):
        out = []
        for key in sorted(set(expected) | set(found), key=lambda k: (k != "pruner", str(k))):  # the pruner first
            where = f"{path}.{key}" if path else str(key)
            if key not in found:
                out.append(f"{where} is missing from the checkpoint")
            elif key not in expected:
                out.append(f"{where} is in the checkpoint but not in this run")
            else:
                out += _differences(expected[key], found[key], where)
        return out
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        return [d for i, (e, f) in enumerate(zip(expected, found))
                for d in _differences(e, f, f"{path}.{i}" if path else str(i))]
    if expected != found:
        shown = lambda v: (json.dumps(v)[:120] + "...") if len(json.dumps(v)) > 120 else json.dumps(v)  # noqa: E731
        return [f"{path or 'fingerprint'}: this run has {shown(expected)}, the checkpoint {shown(found)}"]
    return []


def load_checkpoint(path: str | os.PathLike, expect: Mapping[str, Any] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; runs no code from the file.

    Args:
        expect: the fingerprint of this run; a checkpoint whose ``meta["fingerprint"]``
            differs is refused, naming what differs.

    Raises:
        CheckpointMismatch: (a ValueError) it was written for another run.
        ValueError: the file is not a complete, unaltered secateurs checkpoint.
    """
    path = Path(path)
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint (truncated or damaged?): "
                         f"{str(err).rstrip('.')}.") from None
    if header.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a secateurs checkpoint (format {header.get('format')!r}).")
    if header.get("sha256") != _digest(tensors, header.get("meta", "")):
        raise ValueError(f"{str(path)!r} is damaged: its tensors or description do not match the checksum "
                         f"written with them.")
    try:
        meta = json.loads(header.get("meta", ""))
    except json.JSONDecodeError:
        raise ValueError(f"{str(path)!r} is damaged: its description is not valid JSON.") from None
    if expect is not None:
        diffs = _differences(json.loads(json.dumps(dict(expect))), meta.get("fingerprint", {}))
        if diffs:
            raise CheckpointMismatch(f"{str(path)!r} was written for another run: " + "; ".join(diffs[:5]) + ".")
    return tensors, meta


# -- what a long run saves ----------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch, NumPy and Python random states, as tensors and JSON values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(state), gauss]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["rng/torch"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def module_state(model: nn.Module, prefix: str = "model/") -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (masked parameters by their stored values; the mask
    buffers are saved with them), tied tensors once per name."""
    return {prefix + k: v for k, v in model.state_dict(keep_vars=False).items()}


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """An optimizer's state dict split into tensors and JSON values."""
    state = optimizer.state_dict()
    tensors, values = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}state/{index}/{key}"] = value
            else:
                values[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "values": values}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Any,
                         prefix: str) -> None:
    """Restore what :func:`optimizer_state` returned into ``optimizer`` (copies of the
    tensors: ``tensors`` stay as they are however the optimizer trains on)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "state/"):
            index, name = key[len(prefix + "state/"):].split("/", 1)
            # A copy: the optimizer would otherwise train the caller's tensor in place.
            state.setdefault(int(index), {})[name] = value.clone()
    for key, value in meta["values"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
