"""Where eager resnet18 spends its time, dense and pruned: convolutions (and the classifier) against
BatchNorm, ReLU, the residual adds and pooling, from torch.profiler at 1 thread, batch 1, 224x224.

    .venv/bin/python bench/bench_eager_split.py [RUN_FOLDER]

RUN_FOLDER is the sped-up resnet18 that bench/bench_cli.py writes (default out/bench_cli/resnet18).
It prints the per-call milliseconds of both groups, twice, dense and pruned alternately.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from secateurs.cli._load import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCTS = ("aten::conv2d", "aten::linear")
OTHERS = ("aten::batch_norm", "aten::relu_", "aten::relu", "aten::add_", "aten::max_pool2d",
          "aten::adaptive_avg_pool2d")


def split(model: torch.nn.Module, x: torch.Tensor, calls: int = 10) -> tuple[float, float]:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    ms = lambda keys: sum(totals.get(k, 0.0) for k in keys) / calls / 1000  # noqa: E731
    return ms(PRODUCTS), ms(OTHERS)


def main(argv: list[str]) -> None:
    folder = argv[0] if argv else os.path.join(ROOT, "out", "bench_cli", "resnet18")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    dense = load_model("torchvision:resnet18", input_shape="1,3,224,224").model.eval()
    pruned = load_model(folder, input_shape="1,3,224,224").model.eval()
    for name, model in (("dense", dense), ("pruned", pruned)) * 2:
        products, others = split(model, x)
        print(f"{name:6s} conv2d+linear {products:6.2f} ms   batch_norm/relu/add/pool {others:5.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
