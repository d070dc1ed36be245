"""Run under torchrun by test_distributed.py: prune a DDP-wrapped model on rank-specific
data with each data-driven pruner and save every rank's masks."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from secateurs import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    SlimPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
    save_masks,
)


def build():
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    data = [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(6)]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in data * 5:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    def step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    cases = {
        "apoz": (ActivationAPoZRankPruner, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
        "meanrank": (ActivationMeanRankPruner, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
        "taylor": (TaylorFOWeightPruner, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
        # "module.1" names the BatchNorm through the DDP wrapper's prefix
        "slim": (SlimPruner, [{"op_names": ["module.1"], "sparse_ratio": 0.5}]),
    }
    for name, (cls, config) in cases.items():
        model = DistributedDataParallel(build())
        evaluator = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01), step)
        _, masks = cls(model, config, evaluator, training_steps=4).compress()
        save_masks(masks, os.path.join(out_dir, f"{name}-rank{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
