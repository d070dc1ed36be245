"""Peer timings: NNI 3.0's mask computation on a random-init torchvision resnet50.

Measures, for three cases, the wall-clock seconds of building an NNI pruner and of
its ``compress()`` call (which computes and returns the masks), the sparsity the
returned masks realise over the targeted weights, and the peak-RSS growth of the
process across construction + compress:

  level_global  LevelPruner, one global group over every Conv2d and Linear weight, 0.5
  l1_conv       L1NormPruner, per layer over every Conv2d (output channels), 0.5
  fpgm_conv     FPGMPruner, per layer over every Conv2d (output channels), 0.5

Run with the benchmark venv (see the install notes in the report that came with it):

    .venv-bench/bin/python bench/_nni_peer.py            # every case, one fresh process each
    .venv-bench/bin/python bench/_nni_peer.py l1_conv    # one case, in this process

NNI 3.0 schema notes (checked in nni/compression/base/config.py and
nni/compression/pruning/tools/sparse_gen.py): ``global_group_id`` is a plain setting
key of type int or str; every target with the same id is ranked together and the group
prunes ``int(total_elements * sparse_ratio)`` units.  NNI finds the global threshold
with a per-element Python ``heapq`` loop, which is why level_global is slow.
No monkeypatch is needed: all three cases run as shipped on torch 2.14.1.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
import torchvision
from nni.compression.pruning import FPGMPruner, L1NormPruner, LevelPruner

CASES = {
    "level_global": (LevelPruner, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "global_group_id": 0}]),
    "l1_conv": (L1NormPruner, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
    "fpgm_conv": (FPGMPruner, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
}


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def realised_sparsity(masks: dict) -> dict:
    """Fraction of zeros over every returned weight mask, plus per-layer extremes.

    For channel pruners also the fraction of output channels that are wholly masked.
    """
    zeros = total = 0
    per_layer, chan_zero, chan_total = [], 0, 0
    for targets in masks.values():
        w = targets["weight"]
        z = int((w == 0).sum())
        zeros, total = zeros + z, total + w.numel()
        per_layer.append(z / w.numel())
        dead = (w.flatten(1) == 0).all(dim=1)
        chan_zero, chan_total = chan_zero + int(dead.sum()), chan_total + dead.numel()
    return {
        "layers": len(masks),
        "weights": total,
        "zeros": zeros,
        "sparsity": zeros / total,
        "layer_min": min(per_layer),
        "layer_max": max(per_layer),
        "dead_out_channel_frac": chan_zero / chan_total,
    }


def time_case(name: str, model: torch.nn.Module | None = None) -> dict:
    """Prune ``model`` (a fresh resnet50 if None) with case ``name``; return timings and stats."""
    torch.set_num_threads(2)
    pruner_cls, config_list = CASES[name]
    if model is None:
        model = torchvision.models.resnet50()
    rss0 = _max_rss_mib()
    t0 = time.perf_counter()
    pruner = pruner_cls(model, config_list)
    t1 = time.perf_counter()
    rss1 = _max_rss_mib()
    _, masks = pruner.compress()
    t2 = time.perf_counter()
    rss2 = _max_rss_mib()
    return {
        "case": name,
        "construct_s": t1 - t0,
        "compress_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_rss_growth_mib": rss2 - rss0,
        "peak_rss_growth_construct_mib": rss1 - rss0,
        "peak_rss_before_mib": rss0,
        **realised_sparsity(masks),
    }


def run_fresh(name: str) -> dict:
    """Run one case in a fresh interpreter, so its RSS reading is not polluted by others."""
    out = subprocess.run([sys.executable, __file__, name, "--json"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    names = [a for a in argv if not a.startswith("--")]
    if names:
        results = [time_case(n) for n in names]
    else:
        results = [run_fresh(n) for n in CASES]
    if "--json" in argv:
        print(json.dumps(results[0] if len(results) == 1 else results))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for r in results:
        print(f"{r['case']:13s} construct {r['construct_s']:8.3f}s  compress {r['compress_s']:8.3f}s  "
              f"total {r['total_s']:8.3f}s  sparsity {r['sparsity']:.6f} = {r['zeros']}/{r['weights']} "
              f"(layers {r['layers']}, per-layer {r['layer_min']:.4f}..{r['layer_max']:.4f}, "
              f"dead out-channels {r['dead_out_channel_frac']:.4f})  "
              f"peak RSS +{r['peak_rss_growth_mib']:.1f} MiB (construct +{r['peak_rss_growth_construct_mib']:.1f})")


if __name__ == "__main__":
    main(sys.argv[1:])
