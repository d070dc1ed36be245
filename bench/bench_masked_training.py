"""Cost of training with masks attached: one SGD step of resnet18 (batch 16, 64x64 input),
dense against the same model with 80% of its Conv2d and Linear weights masked (LevelPruner),
interleaved step by step in one process so both see the same machine load.

    .venv/bin/python bench/bench_masked_training.py     # writes its section of docs/benchmarks.md
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def main() -> None:
    import torch
    import torchvision

    from bench_foundation import machine, revision, write_section
    from secateurs import LevelPruner

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense = torchvision.models.resnet18()
    masked = copy.deepcopy(dense)
    LevelPruner(masked, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.8}]).compress()
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 1000, (16,))

    def stepper(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> float:
            t = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            return time.perf_counter() - t

        return step

    steps = {"dense": stepper(dense), "masked": stepper(masked)}
    for _ in range(5):  # warm-up
        for s in steps.values():
            s()
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    ratios, medians = [], {"dense": [], "masked": []}
    for _ in range(rounds):
        times = {k: [] for k in steps}
        for _ in range(20):
            for k, s in steps.items():
                times[k].append(s())
        for k in steps:
            medians[k].append(statistics.median(times[k]))
        ratios.append(medians["masked"][-1] / medians["dense"][-1])
    d, m = statistics.median(medians["dense"]) * 1000, statistics.median(medians["masked"]) * 1000
    text = f"""## Training with masks attached (issue 8, item 7)

Command: `.venv/bin/python bench/bench_masked_training.py` (run {time.strftime('%Y-%m-%d')}, source revision
{revision()})
Machine: {machine()}.
One SGD step (momentum 0.9) of torchvision resnet18, batch 16 at 64x64, dense against the same
model with 80% of its Conv2d and Linear weights masked (LevelPruner, masks attached as
parametrizations); the two alternate step by step, {rounds} rounds of 20 steps each, median per round.

| model | step ms (median of rounds) |
|---|---|
| dense | {d:.1f} |
| masked | {m:.1f} |

Masked over dense, per round: {', '.join(f'{r:.3f}' for r in sorted(ratios))}; median **{statistics.median(ratios):.3f}x**.
"""
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "masked-training", text)
    print(text)


if __name__ == "__main__":
    main()
