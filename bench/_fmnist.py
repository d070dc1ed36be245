"""Shared pieces of bench_iterative.py that every venv imports (torch, numpy, safetensors only).

The model, the data as .npy, a seeded batch stream, a plain training loop, accuracy, peak RSS,
and fixed masks as plain parametrizations (for the peers' tickets, which come back as bare
tensors). Nothing here imports secateurs or nni.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess

from torch import nn

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"


def run_worker(python: str, script: str, args: list[str], cwd: str) -> dict:
    """Run ``script --worker ARGS`` with another venv's ``python``; its result is the JSON on its last
    ``RESULT`` line. A failure raises RuntimeError with the last line of its output first."""
    proc = subprocess.run([python, script, "--worker", *args], capture_output=True, text=True, cwd=cwd, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    head = lines[-1] if lines else "no output"
    raise RuntimeError(f"exit {proc.returncode}: {head}\n" + "\n".join(lines[-25:]))


def read_idx(path: str):
    """One gzipped IDX file: magic (0, 0, 0x08 = uint8, ndim), ndim big-endian uint32 sizes, data."""
    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def write_npy(folder: str, n_train: int, subset_seed: int = 12345) -> None:
    """Decode the Debian package's IDX files once into uint8/int64 .npy files (a seeded
    ``n_train`` subset of the 60k training images, and the full 10k test set)."""
    import numpy as np

    paths = {s: [os.path.join(FASHION_MNIST_DIR, f"{p}-{w}-ubyte.gz") for w in ("images-idx3", "labels-idx1")]
             for s, p in (("train", "train"), ("test", "t10k"))}
    for path in (path for pair in paths.values() for path in pair):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; install Fashion-MNIST with: {INSTALL_HINT}")
    os.makedirs(folder, exist_ok=True)
    for split, (images, labels) in paths.items():
        x, y = read_idx(images), read_idx(labels).astype(np.int64)
        if split == "train":
            keep = np.sort(np.random.default_rng(subset_seed).permutation(len(x))[:n_train])
            x, y = x[keep], y[keep]
        np.save(os.path.join(folder, f"{split}_x.npy"), np.ascontiguousarray(x))
        np.save(os.path.join(folder, f"{split}_y.npy"), y)


def load_split(folder: str, split: str):
    import numpy as np
    import torch

    x = torch.from_numpy(np.load(os.path.join(folder, f"{split}_x.npy"), allow_pickle=False))
    y = torch.from_numpy(np.load(os.path.join(folder, f"{split}_y.npy"), allow_pickle=False))
    return x.float().div_(255.0).unsqueeze(1), y


class SmallCNN(nn.Module):
    """2 conv + 2 linear, 220k parameters: conv 1->32 and 32->64 (3x3, ReLU, max-pool), Linear 3136->64->10.

    At module level because NNI 2.10's iterative pruners pickle the whole model to their log folder.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


def build_model() -> SmallCNN:
    return SmallCNN()


class BatchStream:
    """Seeded batches without replacement, reshuffled every pass; one stream per cell, so
    successive training calls (rounds) see successive batches, the same for every library."""

    def __init__(self, x, y, batch: int, seed: int) -> None:
        import torch

        self.x, self.y, self.batch = x, y, batch
        self.g = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(len(x), generator=self.g), 0

    def next(self):
        import torch

        if self.pos + self.batch > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.x), generator=self.g), 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx], self.y[idx]


def train_steps(model, optimizer, loss_of, stream: BatchStream, steps: int) -> int:
    """``steps`` optimizer steps of ``loss_of(batch, model)``; returns the steps run. A caller's
    evaluator may stop it earlier by raising from ``optimizer.step()``."""
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(stream.next(), model).backward()
        optimizer.step()
    return steps


def accuracy(model, x, y) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 250):  # 250 at a time: faster here than 1000, and a smaller peak
            correct += int((model(x[i:i + 250]).argmax(1) == y[i:i + 250]).sum())
    return correct / len(x)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def attach_fixed_masks(model, masks: dict) -> None:
    """Multiply each named weight by its fixed 0/1 mask in every forward (torch parametrize);
    used to train a peer's ticket, whose masks come back as bare tensors."""
    import torch
    from torch.nn.utils import parametrize

    class _Mul(torch.nn.Module):
        def __init__(self, mask) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    modules = dict(model.named_modules())
    for name, targets in masks.items():
        for target, mask in targets.items():
            parametrize.register_parametrization(modules[name], target, _Mul(mask.to(torch.float32)))
