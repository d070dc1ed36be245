"""Cost of training with masks: one SGD step of resnet18 (batch 16, 64x64 input), dense
against the same model with 80% of its Conv2d and Linear weights masked (LevelPruner), in
the two ways a masked model trains: with the masks attached (parametrizations: a user's own
loop) and as the long-running pruners train it (MaskedInPlace: pruned entries held at zero
in place). The four alternate step by step in one process so all see the same machine load.

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
    from secateurs.masks import MaskedInPlace

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense = torchvision.models.resnet18()
    masked = copy.deepcopy(dense)
    held = copy.deepcopy(dense)
    rezeroed = copy.deepcopy(dense)
    for model in (masked, held, rezeroed):
        LevelPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.8}]).compress()
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 1000, (16,))

    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
                  for name, m in (("dense", dense), ("masked", masked), ("in place", held),
                                  ("in place, re-zeroed", rezeroed))}

    def stepper(model, opt, after=None):
        def step() -> float:
            t = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if after is not None:
                after()  # what the pruners' step hook does
            return time.perf_counter() - t

        return step

    # As the pruners hold it: given the evaluator's optimizer (SGD keeps held zeros at zero, so
    # after_step has nothing to do and only the gradients are masked).
    in_place = MaskedInPlace(held, [optimizers["in place"]]).__enter__()
    # An optimizer it does not know (a Lightning or HF one, or not a torch class): zeroed after every step.
    unknown = MaskedInPlace(rezeroed).__enter__()
    steps = {"dense": stepper(dense, optimizers["dense"]), "masked": stepper(masked, optimizers["masked"]),
             "in place": stepper(held, optimizers["in place"], in_place.after_step),
             "in place, re-zeroed": stepper(rezeroed, optimizers["in place, re-zeroed"], unknown.after_step)}
    for _ in range(5):  # warm-up
        for s in steps.values():
            s()
    rounds = int(os.environ.get("BENCH_ROUNDS", "9"))
    ratios = {"masked": [], "in place": [], "in place, re-zeroed": []}
    medians = {k: [] for k in steps}
    for _ in range(rounds):
        times = {k: [] for k in steps}
        for _ in range(20):
            for k, s in steps.items():
                times[k].append(s())
        for k in steps:
            medians[k].append(statistics.median(times[k]))
        for k in ratios:
            ratios[k].append(medians[k][-1] / medians["dense"][-1])
    ms = {k: statistics.median(v) * 1000 for k, v in medians.items()}
    text = f"""## Training with masks (issue 8, item 7)

Command: `.venv/bin/python bench/bench_masked_training.py` (run {time.strftime('%Y-%m-%d')}, source revision
{revision()})
Machine: {machine()}.
One SGD step (momentum 0.9) of torchvision resnet18, batch 16 at 64x64, dense against the same
model with 80% of its Conv2d and Linear weights masked (LevelPruner): **masked**, the masks
attached as parametrizations (how a user's own loop trains a pruned model); **in place**, as
LinearPruner, AGPPruner, LotteryTicketPruner and ADMMPruner train it
(`secateurs.masks.MaskedInPlace`: the masks are taken off, pruned entries held at zero in the
weight itself, gradients masked as they accumulate; with torch's SGD, given as the evaluator's
optimizer, the pruned entries stay zero without zeroing them after each step); and in place
with an optimizer it does not know to keep zeros (Lightning's, Hugging Face's, or not a torch
class), where the pruned entries are zeroed after every step. The four alternate step by
step, {rounds} rounds of 20 steps each, median per round. Target (issue 8): within 1.05x of
dense for the pruners' training.

| model | step ms (median of rounds) | over dense, median of per-round ratios | per-round ratios |
|---|---|---|---|
| dense | {ms["dense"]:.1f} | 1 | |
| masked (attached) | {ms["masked"]:.1f} | **{statistics.median(ratios["masked"]):.3f}x** | {', '.join(f'{r:.3f}' for r in sorted(ratios["masked"]))} |
| in place (pruners' training) | {ms["in place"]:.1f} | **{statistics.median(ratios["in place"]):.3f}x** | {', '.join(f'{r:.3f}' for r in sorted(ratios["in place"]))} |
| in place, optimizer not known to keep zeros (zeroed after each step) | {ms["in place, re-zeroed"]:.1f} | **{statistics.median(ratios["in place, re-zeroed"]):.3f}x** | {', '.join(f'{r:.3f}' for r in sorted(ratios["in place, re-zeroed"]))} |
"""
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "masked-training", text)
    print(text)


if __name__ == "__main__":
    main()
