"""Reading the safetensors files secateurs writes: tensors plus a JSON entry in the
metadata, tagged with a format name. Nothing in a file is executed."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


def read_tagged(path: str | os.PathLike, fmt: str, what: str, key: str,
                tensors: bool = True) -> tuple[Any, dict[str, torch.Tensor]]:
    """Read ``path`` and return (the JSON stored under metadata ``key``, the tensors).

    Args:
        fmt: the format tag the file must carry in its metadata (``"format"``).
        what: how to call the file in errors ("masks file").
        tensors: load the tensors too (else an empty dict is returned for them).

    Raises:
        ValueError: not a readable safetensors file, another format, or damaged JSON.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path!r} is not a readable safetensors {what}: {err}") from None
    if metadata.get("format") != fmt:
        raise ValueError(f"{path!r} is not a secateurs {what} (format {metadata.get('format')!r}, expected {fmt!r}).")
    try:
        return json.loads(metadata[key]), loaded
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path!r} has a damaged {key!r} entry: {err}") from None
