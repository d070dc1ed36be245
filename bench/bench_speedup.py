"""Speedup engine: time to shrink resnet50, and CPU latency of the shrunk models.

1. Shrinking resnet50 (random init, 1x3x224x224 example) with half of every Conv2d's
   output channels removed, one fresh process per library:
     secateurs     L1NormPruner(dummy_input=...).compress() + ModelSpeedup(...).speedup_model()
     NNI 3.0       L1NormPruner.compress() + ModelSpeedup(graph_module=torch.fx.symbolic_trace(model))
     Torch-Pruning DependencyGraph build + prune step (MagnitudeImportance p=1, fc ignored)
   For each: seconds, parameters after, and the largest difference between the masked
   model's output and the shrunk model's (Torch-Pruning has no masked model: n/a).
2. Latency (2 threads, batch 1 and 32, median of repeated runs) of dense, secateurs-shrunk
   and Torch-Pruning-shrunk resnet18 and resnet50, next to the MACs ratio, as they are
   and compiled for inference (TorchScript, frozen, optimize_for_inference).

    .venv-bench/bin/python bench/bench_speedup.py     # writes its section of docs/benchmarks.md
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]


def _model(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # real-looking BN statistics, so a leaking BN bias would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model


def shrink(lib: str, name: str = "resnet50"):
    """Shrink ``name`` with ``lib``; returns (model, stats)."""
    import torch

    torch.set_num_threads(2)
    model = _model(name)
    x = torch.randn(1, 3, 224, 224)
    stats = {"lib": lib, "params_before": sum(p.numel() for p in model.parameters())}
    if lib == "secateurs":
        from secateurs import L1NormPruner, ModelSpeedup

        t0 = time.perf_counter()
        _, masks = L1NormPruner(model, CONFIG, dummy_input=x).compress()
        t1 = time.perf_counter()
        with torch.no_grad():
            masked = model(x)
        t2 = time.perf_counter()
        ModelSpeedup(model, x, masks).speedup_model()
        t3 = time.perf_counter()
        stats.update(prune_s=t1 - t0, speedup_s=t3 - t2)
    elif lib == "nni":
        from nni.compression.pruning import L1NormPruner
        from nni.compression.speedup import ModelSpeedup

        t0 = time.perf_counter()
        pruner = L1NormPruner(model, CONFIG)
        _, masks = pruner.compress()
        t1 = time.perf_counter()
        with torch.no_grad():
            masked = model(x)
        pruner.unwrap_model()
        t2 = time.perf_counter()
        ModelSpeedup(model, x, masks, graph_module=torch.fx.symbolic_trace(model)).speedup_model()
        t3 = time.perf_counter()
        stats.update(prune_s=t1 - t0, speedup_s=t3 - t2)
    else:
        import torch_pruning as tp

        masked = None
        t0 = time.perf_counter()
        pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=0.5, ignored_layers=[model.fc])
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
        stats.update(prune_s=t1 - t0, speedup_s=t2 - t1)
    with torch.no_grad():
        out = model(x)
    stats["params_after"] = sum(p.numel() for p in model.parameters())
    stats["output_shape"] = list(out.shape)
    if masked is not None:
        stats["max_rel_diff"] = float((out - masked).abs().max() / masked.abs().max())
    return model, stats


def latency(model, batch: int, repeats: int, frozen: bool = False) -> float:
    """Median milliseconds of one forward pass; ``frozen`` first compiles the model for
    inference as a CPU deployment would (TorchScript trace, freeze, optimize_for_inference:
    BatchNorm folded, conv + activation fused by oneDNN)."""
    import torch

    torch.set_num_threads(2)
    x = torch.randn(batch, 3, 224, 224)
    if frozen:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model = torch.jit.optimize_for_inference(torch.jit.trace(model.eval(), x))
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def worker(lib: str, name: str, with_latency: bool) -> dict:
    import torch

    from secateurs import count_flops_params

    if lib == "dense":
        model, stats = _model(name), {"lib": "dense"}
        stats["params_after"] = sum(p.numel() for p in model.parameters())
    else:
        model, stats = shrink(lib, name)
    stats["macs"] = count_flops_params(model, torch.randn(1, 3, 224, 224))[0]
    if with_latency:
        stats["latency_ms"] = {b: latency(model, b, 15 if b == 1 else 5) for b in (1, 32)}
        stats["frozen_latency_ms"] = {b: latency(model, b, 15 if b == 1 else 5, frozen=True) for b in (1, 32)}
    return stats


def fresh(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(argv[1], argv[2], argv[3] == "1")))
        return
    from bench_foundation import machine, revision, write_section

    rounds = int(os.environ.get("BENCH_ROUNDS", "7"))
    runs: dict[str, list[dict]] = {"secateurs": [], "torch-pruning": [], "nni": []}
    for k in range(rounds):  # interleaved, so both see the same machine load
        for lib in ("secateurs", "torch-pruning") if k else ("secateurs", "torch-pruning", "nni"):
            r = fresh(lib, "resnet50", "0")
            print(lib, r, flush=True)
            runs[lib].append(r)
    shrink_rows = []
    medians = {}
    for lib, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            shrink_rows.append(f"| {lib} | failed: {results[0]['error']} | | | | |")
            continue
        prune = statistics.median(r["prune_s"] for r in ok)
        speed = statistics.median(r["speedup_s"] for r in ok)
        medians[lib] = total = statistics.median(r["prune_s"] + r["speedup_s"] for r in ok)
        r = ok[0]
        diff = f"{r['max_rel_diff']:.2e}" if "max_rel_diff" in r else "n/a"
        shrink_rows.append(f"| {lib} | {len(ok)} | {prune:.2f} | {speed:.2f} | {total:.2f} | "
                           f"{r['params_before'] / 1e6:.2f} M -> {r['params_after'] / 1e6:.2f} M | {diff} |")
    ratio = medians["secateurs"] / medians["torch-pruning"] if {"secateurs", "torch-pruning"} <= set(medians) else None
    per_round = [a["prune_s"] + a["speedup_s"] for a in runs["secateurs"] if "error" not in a]
    tp_round = [b["prune_s"] + b["speedup_s"] for b in runs["torch-pruning"] if "error" not in b]
    ratios = sorted(a / b for a, b in zip(per_round, tp_round))
    lat_rows = []
    for name in ("resnet18", "resnet50"):
        res = {lib: fresh(lib, name, "1") for lib in ("dense", "secateurs", "torch-pruning")}
        print(name, res, flush=True)
        dense = res["dense"]
        for lib in ("secateurs", "torch-pruning"):
            r = res[lib]
            if "error" in r:
                lat_rows.append(f"| {name} | {lib} | failed: {r['error']} | | | |")
                continue
            macs_ratio = dense["macs"] / r["macs"]
            for key, mode in (("latency_ms", "eager"), ("frozen_latency_ms", "frozen")):
                l1, l32 = (dense[key][k] / r[key][k] for k in ("1", "32"))
                lat_rows.append(
                    f"| {name} | {lib} | {mode} | {dense['macs'] / 1e9:.2f} -> {r['macs'] / 1e9:.2f} "
                    f"({macs_ratio:.2f}x) | {dense[key]['1']:.1f} -> {r[key]['1']:.1f} ({l1:.2f}x) | "
                    f"{dense[key]['32']:.0f} -> {r[key]['32']:.0f} ({l32:.2f}x) |"
                )
    ratio_line = "" if ratio is None else (
        f"secateurs (masks with `dummy_input` + ModelSpeedup) over Torch-Pruning (graph build + pruning), "
        f"median total time: **{ratio:.2f}x** (per round: {', '.join(f'{q:.2f}' for q in ratios)}).")
    text = f"""## Speedup engine on resnet50 and resnet18

Command: `.venv-bench/bin/python bench/bench_speedup.py` (run {time.strftime('%Y-%m-%d')}, source revision
{revision()})
Machine: {machine()}.
Half of every Conv2d's output channels removed (L1 norm; the classifier's outputs kept).
Each run is one fresh process; secateurs and Torch-Pruning are interleaved over {rounds} rounds (NNI,
at about 25 s a run, once), medians shown.

Shrinking resnet50 (`prune s` = computing masks, or Torch-Pruning's graph build;
`speedup s` = making the smaller model; difference = largest |shrunk - masked| output
over the largest |masked| output, on a 1x3x224x224 input, BatchNorm with non-zero statistics and biases):

| library | runs | prune s | speedup s | total s | parameters | masked vs shrunk |
|---|---|---|---|---|---|---|
""" + "\n".join(shrink_rows) + f"""

{ratio_line}

CPU latency, 2 threads, median (batch 1: 15 runs, batch 32: 5 runs), 224x224 input; MACs from
`count_flops_params` (multiply-accumulates). The MACs ratio is the limit for the latency ratio.
"eager" runs the models as they are; "frozen" first compiles each (dense and shrunk alike) as a
CPU deployment would: `torch.jit.trace`, then `torch.jit.optimize_for_inference` (BatchNorm folded,
conv + ReLU fused by oneDNN):

| model | shrunk by | mode | GMACs (ratio) | batch 1 ms (speed-up) | batch 32 ms (speed-up) |
|---|---|---|---|---|---|
""" + "\n".join(lat_rows) + "\n"
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "speedup", text)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main(sys.argv[1:])
