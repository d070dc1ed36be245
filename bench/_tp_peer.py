"""Peer timings: Torch-Pruning 1.6.1 structural pruning of a random-init resnet50.

Measures the wall-clock seconds of building Torch-Pruning's DependencyGraph (done by
the pruner's constructor, traced with a 1x3x224x224 input) and of the prune step that
physically removes 50% of every Conv2d's output channels (L1 magnitude importance,
per layer; the classifier's outputs are kept via ignored_layers=[model.fc]), plus
MACs and parameter counts before and after from tp.utils.count_ops_and_params.

    .venv-bench/bin/python bench/_tp_peer.py
"""
from __future__ import annotations

import time

import torch
import torch_pruning as tp
import torchvision


def time_tp_resnet50(pruning_ratio: float = 0.5) -> dict:
    torch.set_num_threads(2)
    model = torchvision.models.resnet50().eval()
    example = torch.randn(1, 3, 224, 224)
    macs0, params0 = tp.utils.count_ops_and_params(model, example)

    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=pruning_ratio, ignored_layers=[model.fc])
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()

    macs1, params1 = tp.utils.count_ops_and_params(model, example)
    with torch.no_grad():
        out_shape = tuple(model(example).shape)
    return {"graph_build_s": t1 - t0, "prune_s": t2 - t1, "macs_before": macs0, "macs_after": macs1,
            "params_before": params0, "params_after": params1, "output_shape": out_shape}


if __name__ == "__main__":
    r = time_tp_resnet50()
    print(f"torch {torch.__version__}, torch-pruning {tp.__version__} (module string), threads {torch.get_num_threads()}")
    print(f"graph build {r['graph_build_s']:.3f}s  prune step {r['prune_s']:.3f}s  output {r['output_shape']}")
    print(f"MACs   {r['macs_before'] / 1e9:.4f} G -> {r['macs_after'] / 1e9:.4f} G ({r['macs_after'] / r['macs_before']:.3f}x)")
    print(f"params {r['params_before'] / 1e6:.4f} M -> {r['params_after'] / 1e6:.4f} M ({r['params_after'] / r['params_before']:.3f}x)")
