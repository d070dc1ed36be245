"""Run under torchrun by test_distributed.py: prune a DDP-wrapped model with each
data-driven pruner (and LotteryTicket and ADMM, which train in rounds), each rank on its
own data, and save every rank's masks.

The data are built so that each rank alone would keep different channels: input
channel ``c`` of rank ``r`` is active (+1, else -1) at a fixed fraction ``ACTIVE[r][c]`` of
its positions, and the first layer is the identity, so a channel's activations, its
Taylor score and its BatchNorm scale all grow with that fraction. Only statistics
combined over both ranks give the masks of one process that sees both ranks' data.
test_distributed.py imports this module for that single-process reference.
"""

import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from secateurs import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    ADMMPruner,
    LotteryTicketPruner,
    SlimPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
    save_masks,
)

ACTIVE = {0: (0.5, 0.3, 0.1, 0.0), 1: (0.0, 0.1, 0.5, 0.3)}  # per rank, per input channel
STEPS = 4
CASES = {
    "apoz": (ActivationAPoZRankPruner, False, "0"),
    "meanrank": (ActivationMeanRankPruner, False, "0"),
    "taylor": (TaylorFOWeightPruner, False, "0"),
    "slim": (SlimPruner, True, "1"),  # the BatchNorm
    # Long-running pruners: their rounds must train the DDP wrapper, whose all-reduce keeps the
    # ranks' weights (and so their masks) one.
    "lottery": (LotteryTicketPruner, False, "0"),
    "admm": (ADMMPruner, False, "0"),
}
ROUNDS = {"lottery": {"total_iteration": 2}, "admm": {"iterations": 2}}


def build(norm: bool) -> nn.Module:
    """identity 1x1 conv (-> BatchNorm) -> ReLU -> mean -> sum of channels."""
    conv, head = nn.Conv2d(4, 4, 1), nn.Linear(4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
        conv.bias.zero_()
        head.weight.fill_(1.0)
        head.bias.zero_()
    layers = [conv, nn.BatchNorm2d(4)] if norm else [conv]
    return nn.Sequential(*layers, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def rank_data(rank: int) -> list[torch.Tensor]:
    """STEPS batches of shape (4, 4, 4, 4); channel c is +1 at exactly ACTIVE[rank][c] of its positions."""
    g = torch.Generator().manual_seed(100 + rank)
    order = torch.rand(STEPS, 4, 64, generator=g).argsort(-1).argsort(-1)  # a random rank per position
    active = order < (torch.tensor(ACTIVE[rank]) * 64).round().reshape(1, 4, 1)
    x = active.float() * 2 - 1
    return list(x.reshape(STEPS, 4, 4, 4, 4).permute(0, 2, 1, 3, 4).contiguous())


def prune(name: str, model: nn.Module, steps: list[list[torch.Tensor]], prefix: str = ""):
    """Prune ``model`` with case ``name``; each optimizer step averages the loss over a list of batches."""
    cls, _, target = CASES[name]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batches in steps * 5:
            optimizers.zero_grad()
            (sum(training_step(b, model) for b in batches) / len(batches)).backward()
            optimizers.step()

    def step(batch, model):
        return -model(batch).mean()

    evaluator = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1), step)
    config = [{"op_names": [prefix + target], "sparse_ratio": 0.5}]
    _, masks = cls(model, config, evaluator, training_steps=STEPS, **ROUNDS.get(name, {})).compress()
    return masks


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, (_, norm, _) in CASES.items():
        model = nn.parallel.DistributedDataParallel(build(norm))
        # "module." names the layer through the DDP wrapper's prefix
        masks = prune(name, model, [[x] for x in rank_data(rank)], prefix="module.")
        save_masks(masks, os.path.join(out_dir, f"{name}-rank{rank}.safetensors"))
        # Free each DDP model (its reducer holds gloo work) now, not at some later collection:
        # a reducer still alive when the process group goes can abort the process at exit.
        del model, masks
        gc.collect()
    # Checkpoints under torch.distributed: each rank keeps its own; a finished run is restored
    # on every rank without training again.
    for attempt in ("first", "again"):
        calls = []
        model = nn.parallel.DistributedDataParallel(build(False))
        x = rank_data(rank)

        def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs, calls=calls, x=x):
            calls.append(1)
            for batch in x * 5:
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()

        ev = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1), lambda b, m: -m(b).mean())
        pruner = LotteryTicketPruner(model, [{"op_names": ["module.0"], "sparse_ratio": 0.5}], ev,
                                     total_iteration=2, training_steps=STEPS,
                                     checkpoint_dir=os.path.join(out_dir, "checkpoints"))
        _, masks = pruner.compress()
        save_masks(masks, os.path.join(out_dir, f"resume-{attempt}-rank{rank}.safetensors"))
        with open(os.path.join(out_dir, f"resume-{attempt}-rank{rank}.calls"), "w") as f:
            f.write(str(len(calls)))
        del model, masks, pruner, ev
        gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
