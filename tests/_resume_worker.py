"""Run one long-running pruner on a seeded, deterministic training loop, as a user's script
would; used by test_resume.py in subprocesses.

    python tests/_resume_worker.py KIND CHECKPOINT_DIR|- OUT.safetensors [KILL_AT_STEP]

KIND is linear, agp, lottery, lottery-rewind or admm. With KILL_AT_STEP the process kills
itself with SIGKILL at that optimizer step (counted over the whole process). The final
masks, the model's stored tensors, the optimizer state and the pruner's history go to OUT.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from secateurs import ADMMPruner, AGPPruner, L1NormPruner, LevelPruner, LinearPruner, LotteryTicketPruner, TorchEvaluator
from secateurs.checkpoint import optimizer_state
from secateurs.masks import get_masks


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.drop = nn.Dropout(0.2)  # draws from the torch RNG in every training step
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = F.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 2).flatten(1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def main() -> None:
    kind, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    folder = None if folder == "-" else folder
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model = Net()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    steps = [0]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        model.train()
        for _ in range(100):
            order = torch.randperm(64)  # the torch RNG decides the batches
            for i in range(0, 64, 16):
                idx = order[i:i + 16]
                optimizers.zero_grad()
                training_step((images[idx], labels[idx]), model).backward()
                steps[0] += 1
                if steps[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                optimizers.step()
                lr_schedulers.step()

    def evaluate(model):
        model.eval()
        with torch.no_grad():
            return float((model(images).argmax(1) == labels).float().mean())

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.9)
    ev = TorchEvaluator(loop, opt, lambda b, m: F.cross_entropy(m(b[0]), b[1]), sched, evaluating_func=evaluate)
    config = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.75}]
    dummy = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    if kind in ("linear", "agp"):
        cls = LinearPruner if kind == "linear" else AGPPruner
        pruner = cls(L1NormPruner(model, config, dummy_input=dummy), 3, 3, ev, checkpoint_dir=folder)
        pruner.compress(max_steps=13)
    elif kind.startswith("lottery"):
        pruner = LotteryTicketPruner(model, config, ev, total_iteration=3, training_steps=4,
                                     rewind_step=2 if kind == "lottery-rewind" else 0, checkpoint_dir=folder)
        pruner.compress()
    elif kind == "admm":
        pruner = ADMMPruner(model, [{**config[0], "rho": 1e-2}], ev, iterations=3, training_steps=4,
                            checkpoint_dir=folder)
        pruner.compress()
    else:
        pruner = LevelPruner(model, config)  # unknown kind: fail loudly below
        raise SystemExit(f"unknown kind {kind!r}")
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"mask/{m}/{t}": v for m, e in get_masks(model).items() for t, v in e.items()})
    tensors.update(optimizer_state(opt, "optim/")[0])
    history = [{k: v for k, v in entry.items() if k != "masks"} for entry in pruner.history]
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, out,
              metadata={"history": json.dumps(history), "sched": json.dumps(sched.state_dict()),
                        "steps_in_process": str(steps[0])})


if __name__ == "__main__":
    main()
