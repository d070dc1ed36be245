"""Accuracy after pruning on full Fashion-MNIST: secateurs vs NNI, 7 channel pruners.

A small CNN (conv 1->32->64->64 with BatchNorm and ReLU, global average pool, Linear
64->10) is trained dense per seed, then each (library, method, ratio, seed) cell, in a
fresh process from the same dense checkpoint:

  1. prunes the given ratio of the output channels of every Conv2d (Slim: of the
     BatchNorm2d scale factors, ranked across layers); data-driven methods get the
     same number of statistics steps (forward + backward + SGD step on the same batches);
  2. fine-tunes the masked model with the same budget for every method;
  3. measures top-1 accuracy of the masked model on the 10k test set.

Prune time is construction + compress() (including the statistics steps); fine-tune time
is measured separately. NNI 3.0 runs L1/L2/FPGM/Slim/TaylorFO; APoZ and MeanRank were
dropped in 3.0, so they run under NNI 2.10 from its own venv (.venv-nni210).

    apt-get update && apt-get install -y dataset-fashion-mnist
    .venv-bench/bin/python bench/bench_accuracy.py                    # full run, writes docs/benchmarks.md
    .venv-bench/bin/python bench/bench_accuracy.py --quick            # one seed, short budget, no docs
    .venv-bench/bin/python bench/bench_accuracy.py --methods l1 slim --libs nni --seeds 0

Results are kept in out/bench_accuracy/results.json (results_quick.json for --quick);
finished cells are skipped when the command is run again.
"""

from __future__ import annotations

import argparse
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

from bench_foundation import machine, revision, write_section  # noqa: E402

OUT = os.path.join(ROOT, "out", "bench_accuracy")
BENCH_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")
NNI210_PY = os.path.join(ROOT, ".venv-nni210", "bin", "python")

# method -> (secateurs class, NNI class, NNI version that has it, data-driven?)
METHODS = {
    "l1": ("L1NormPruner", "L1NormPruner", "3.0", False),
    "l2": ("L2NormPruner", "L2NormPruner", "3.0", False),
    "fpgm": ("FPGMPruner", "FPGMPruner", "3.0", False),
    "slim": ("SlimPruner", "SlimPruner", "3.0", True),
    "apoz": ("ActivationAPoZRankPruner", "ActivationAPoZRankPruner", "2.10", True),
    "meanrank": ("ActivationMeanRankPruner", "ActivationMeanRankPruner", "2.10", True),
    "taylorfo": ("TaylorFOWeightPruner", "TaylorPruner", "3.0", True),
}
RATIOS = (0.5, 0.75)
LIBS = ("secateurs", "nni")

# Training budget. Optimiser everywhere: SGD, momentum 0.9 (dense: lr decayed linearly to 0).
FULL = {
    "dense_epochs": 2, "dense_batch": 256, "dense_lr": 0.05,
    "stat_steps": 50, "stat_batch": 256, "stat_lr": 0.01,
    "ft_steps": 100, "ft_batch": 128, "ft_lr": 0.01,
}
QUICK = {**FULL, "dense_epochs": 1, "stat_steps": 10, "ft_steps": 20}


# ----------------------------------------------------------------------------- model, data


def build_model():
    import torch.nn as nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
            self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
            self.conv3, self.bn3 = nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64)
            self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.pool(self.relu(self.bn1(self.conv1(x))))
            x = self.pool(self.relu(self.bn2(self.conv2(x))))
            x = self.relu(self.bn3(self.conv3(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return SmallCNN()


# (conv, bn) pairs: a channel counts as pruned when its filter or its BN scale is masked.
BLOCKS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _data_path(split: str, what: str) -> str:
    return os.path.join(OUT, f"fashion_mnist_{split}_{what}.npy")


def cache_data() -> None:
    """Decode Fashion-MNIST once into uint8 .npy files every worker (both venvs) can read fast."""
    import numpy as np

    if all(os.path.exists(_data_path(s, w)) for s in ("train", "test") for w in ("x", "y")):
        return
    from secateurs.datasets import load_fashion_mnist

    os.makedirs(OUT, exist_ok=True)
    for split in ("train", "test"):
        x, y = load_fashion_mnist(split)
        np.save(_data_path(split, "x"), (x * 255).round().to(dtype=__import__("torch").uint8).numpy())
        np.save(_data_path(split, "y"), y.numpy())


def load_split(split: str):
    import numpy as np
    import torch

    x = torch.from_numpy(np.load(_data_path(split, "x"), allow_pickle=False)).float().div_(255.0)
    y = torch.from_numpy(np.load(_data_path(split, "y"), allow_pickle=False))
    return x, y


def batches(x, y, n_steps: int, batch: int, seed: int) -> list:
    """``n_steps`` batches drawn without replacement (reshuffled each pass) by a seeded generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out, perm, pos = [], torch.randperm(len(x), generator=g), 0
    for _ in range(n_steps):
        if pos + batch > len(perm):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos:pos + batch]
        pos += batch
        out.append((x[idx], y[idx]))
    return out


def train_loop(model, optimizer, loss_of, data: list, max_steps=None, max_epochs=None) -> None:
    """Plain loop: loss_of(batch, model) -> loss; backward; optimizer.step(); stops after max_steps."""
    model.train()
    limit = max_steps if max_steps is not None else len(data) * (max_epochs or 1)
    steps = 0
    while steps < limit:
        for batch in data:
            optimizer.zero_grad()
            loss = loss_of(batch, model)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps >= limit:
                return


def accuracy(model, x, y) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
    return correct / len(x)


def dense_path(seed: int, quick: bool) -> str:
    return os.path.join(OUT, f"dense_seed{seed}{'_quick' if quick else ''}.safetensors")


# ----------------------------------------------------------------------------- workers


def run_dense(seed: int, quick: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    budget = QUICK if quick else FULL
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    x, y = load_split("train")
    xt, yt = load_split("test")
    model = build_model()
    steps_per_epoch = len(x) // budget["dense_batch"]
    data = batches(x, y, steps_per_epoch * budget["dense_epochs"], budget["dense_batch"], seed)
    opt = torch.optim.SGD(model.parameters(), lr=budget["dense_lr"], momentum=0.9)
    # Learning rate decayed linearly to 0 over the run, so the checkpoint is not taken mid-oscillation.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / len(data))
    t0 = time.perf_counter()
    model.train()
    for bx, by in data:
        opt.zero_grad()
        F.cross_entropy(model(bx), by).backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    acc = accuracy(model, xt, yt)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense_path(seed, quick))
    info = {"seed": seed, "acc": acc, "train_s": seconds, "steps": len(data)}
    with open(dense_path(seed, quick).replace(".safetensors", ".json"), "w") as f:
        json.dump(info, f)
    return info


def _channels_pruned(masks: dict) -> tuple[int, int]:
    """Output channels of the three conv blocks whose filter or BN scale is masked, of 160."""
    import torch

    pruned = total = 0
    for conv, bn in BLOCKS:
        n = {"conv1": 32, "conv2": 64, "conv3": 64}[conv]
        gone = torch.zeros(n, dtype=torch.bool)
        if conv in masks and "weight" in masks[conv]:
            gone |= masks[conv]["weight"].reshape(n, -1).eq(0).all(1).cpu()
        if bn in masks and "weight" in masks[bn]:
            gone |= masks[bn]["weight"].reshape(n).eq(0).cpu()
        pruned += int(gone.sum())
        total += n
    return pruned, total


def _prune_secateurs(model, method: str, config_list, data: list, budget: dict):
    import torch
    import torch.nn.functional as F
    import secateurs

    cls = getattr(secateurs, METHODS[method][0])
    dummy = torch.randn(1, 1, 28, 28)
    if not METHODS[method][3]:
        return cls(model, config_list, dummy_input=dummy).compress()

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        train_loop(model, opt, training_step, data, max_steps, max_epochs)

    evaluator = secateurs.TorchEvaluator(
        training_func, torch.optim.SGD(model.parameters(), lr=budget["stat_lr"], momentum=0.9),
        lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]))
    steps = budget["stat_steps"]
    if method == "slim":
        pruner = cls(model, config_list, evaluator, steps, regular_scale=1.0, dummy_input=dummy)
    elif method in ("apoz", "meanrank"):
        pruner = cls(model, config_list, evaluator, steps, activation="relu", dummy_input=dummy)
    else:
        pruner = cls(model, config_list, evaluator, steps, dummy_input=dummy)
    return pruner.compress()


def _prune_nni30(model, method: str, config_list, data: list, budget: dict):
    import nni
    import torch
    import torch.nn.functional as F
    from nni.compression import TorchEvaluator
    import nni.compression.pruning as P

    cls = getattr(P, METHODS[method][1])
    if not METHODS[method][3]:
        return cls(model, config_list).compress()

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None,
                      *args, **kwargs):
        opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        train_loop(model, opt, training_step, data, max_steps, max_epochs)

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=budget["stat_lr"], momentum=0.9)
    evaluator = TorchEvaluator(training_func, optimizer,
                               lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]))
    steps = budget["stat_steps"]
    if method == "slim":
        pruner = cls(model, config_list, evaluator, steps, regular_scale=1.0)
    else:
        pruner = cls(model, config_list, evaluator, steps)
    return pruner.compress()


def _prune_nni210(model, method: str, config_list, data: list, budget: dict):
    import nni
    import torch
    import torch.nn.functional as F
    from nni.compression.pytorch import TorchEvaluator
    import nni.compression.pytorch.pruning as P

    cls = getattr(P, METHODS[method][1])

    def training_func(model, optimizers, criterion, lr_schedulers=None, max_steps=None, max_epochs=None,
                      *args, **kwargs):
        opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        train_loop(model, opt, lambda b, m: criterion(m(b[0]), b[1]), data, max_steps, max_epochs)

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=budget["stat_lr"], momentum=0.9)
    evaluator = TorchEvaluator(training_func, optimizer, F.cross_entropy)
    return cls(model, config_list, evaluator, budget["stat_steps"], activation="relu").compress()


def config_for(lib: str, method: str, ratio: float) -> list[dict]:
    if method == "slim":
        config = {"op_types": ["BatchNorm2d"], "sparse_ratio": ratio}
        if lib == "nni":
            config["global_group_id"] = "bn"  # NNI 3.0 ranks per layer unless told; the paper ranks globally
        return [config]
    if lib == "nni" and METHODS[method][2] == "2.10":
        return [{"op_types": ["Conv2d"], "sparsity_per_layer": ratio}]
    return [{"op_types": ["Conv2d"], "sparse_ratio": ratio}]


def run_cell(lib: str, method: str, ratio: float, seed: int, quick: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    budget = QUICK if quick else FULL
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    x, y = load_split("train")
    xt, yt = load_split("test")
    model = build_model()
    model.load_state_dict(load_file(dense_path(seed, quick)))
    # The same batches for every method and library under a seed.
    stat_data = batches(x, y, budget["stat_steps"], budget["stat_batch"], 10_000 + seed)
    ft_data = batches(x, y, budget["ft_steps"], budget["ft_batch"], 20_000 + seed)
    config_list = config_for(lib, method, ratio)
    prune = _prune_secateurs if lib == "secateurs" else (
        _prune_nni210 if METHODS[method][2] == "2.10" else _prune_nni30)
    t0, c0 = time.perf_counter(), time.process_time()
    model, masks = prune(model, method, config_list, stat_data, budget)
    prune_s, prune_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    pruned, total = _channels_pruned(masks)
    acc_pruned = accuracy(model, xt[:2000], yt[:2000])  # a quick look only: first 2,000 test images
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=budget["ft_lr"], momentum=0.9)
    t0, c0 = time.perf_counter(), time.process_time()
    train_loop(model, opt, lambda b, m: F.cross_entropy(m(b[0]), b[1]), ft_data)
    ft_s, ft_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    acc = accuracy(model, xt, yt)
    return {"lib": lib, "version": _lib_version(lib), "method": method, "ratio": ratio, "seed": seed,
            "acc": acc, "acc_before_ft_2k": acc_pruned, "prune_s": prune_s, "ft_s": ft_s,
            "prune_cpu_s": prune_cpu_s, "ft_cpu_s": ft_cpu_s,
            "channels_pruned": pruned, "channels": total, "config_list": config_list,
            "secateurs_src": _secateurs_source_hash() if lib == "secateurs" else None}


def _secateurs_source_hash() -> str:
    """Short hash of secateurs/*.py as the worker saw them (the package is under active development)."""
    import hashlib

    h = hashlib.sha256()
    pkg = os.path.join(ROOT, "secateurs")
    for dirpath, dirnames, filenames in sorted(os.walk(pkg)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(name.encode() + f.read())
    return h.hexdigest()[:12]


def _lib_version(lib: str) -> str:
    if lib == "secateurs":
        import secateurs

        return secateurs.__version__
    import nni

    return nni.__version__


# ----------------------------------------------------------------------------- orchestration


def _python_for(lib: str, method: str) -> str:
    if lib == "nni" and METHODS[method][2] == "2.10":
        return NNI210_PY
    return BENCH_PY if os.path.exists(BENCH_PY) else sys.executable


def _worker(python: str, args: list[str]) -> dict:
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker", *args], capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"worker {args} exited {proc.returncode}:\n" + "\n".join(tail))


def _key(lib: str, method: str, ratio: float, seed: int) -> str:
    return f"{lib}|{method}|{ratio}|{seed}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: dict, dense: dict, methods: list[str], seeds: list[int]) -> str:
    def cell(lib, method, ratio, field):
        rs = [results.get(_key(lib, method, ratio, s)) for s in seeds]
        rs = [r for r in rs if r is not None]
        return [r[field] for r in rs], rs

    rows = []
    for method in methods:
        for ratio in RATIOS:
            if not any(cell(lib, method, ratio, "acc")[0] for lib in LIBS):
                continue
            parts = [f"{method}", f"{ratio:.2f}"]
            for lib in LIBS:
                accs, _ = cell(lib, method, ratio, "acc")
                if accs:
                    m, s = _mean_std([100 * a for a in accs])
                    parts.append(f"{m:.2f} ± {s:.2f}" + ("" if len(accs) == len(seeds) else f" (n={len(accs)})"))
                else:
                    parts.append("not run")
            for lib in LIBS:
                secs, _ = cell(lib, method, ratio, "prune_s")
                parts.append(f"{statistics.fmean(secs):.2f}" if secs else "-")
            fts = []
            for lib in LIBS:
                secs, _ = cell(lib, method, ratio, "ft_s")
                fts.append(f"{statistics.fmean(secs):.1f}" if secs else "-")
            parts.append(" / ".join(fts))
            chans = []
            for lib in LIBS:
                _, rs = cell(lib, method, ratio, "acc")
                chans.append(f"{statistics.fmean(r['channels_pruned'] for r in rs):.0f}" if rs else "-")
            parts.append(" / ".join(chans))
            rows.append("| " + " | ".join(parts) + " |")
    dense_accs = [100 * dense[s]["acc"] for s in seeds if s in dense]
    m, s = _mean_std(dense_accs) if dense_accs else (float("nan"), 0.0)
    head = (f"Dense model before pruning: {m:.2f} ± {s:.2f} % test accuracy "
            f"(seeds {', '.join(map(str, seeds))}).\n\n"
            "| method | ratio | secateurs acc % | NNI acc % | secateurs prune s | NNI prune s "
            "| fine-tune s (ours / NNI) | channels masked of 160 (ours / NNI) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    dead = [f"{r['lib']} {r['method']} {r['ratio']} seed {r['seed']}: {100 * r['acc']:.2f} %"
            for r in results.values() if r["method"] in methods and r["seed"] in seeds and r["acc"] < 0.15]
    tail = ("\n\nAt chance level (10 classes): "
            + "; ".join(sorted(dead)) + "." if dead else "")
    return head + "\n".join(rows) + tail


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        if argv[1] == "dense":
            out = run_dense(int(argv[2]), argv[3] == "quick")
        else:
            lib, method, ratio, seed, mode = argv[1:6]
            out = run_cell(lib, method, float(ratio), int(seed), mode == "quick")
        print("RESULT " + json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--libs", nargs="+", default=list(LIBS), choices=list(LIBS))
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    ap.add_argument("--quick", action="store_true", help="seed 0 only, short budget, results_quick.json, no docs")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing; rebuild the table (and docs) from the results already kept")
    args = ap.parse_args(argv)
    seeds = [0] if args.quick else args.seeds
    mode = "quick" if args.quick else "full"
    budget = QUICK if args.quick else FULL
    os.makedirs(OUT, exist_ok=True)
    cache_data()
    results_path = os.path.join(OUT, "results_quick.json" if args.quick else "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}

    import secateurs

    dense = {}
    for seed in seeds:
        info_path = dense_path(seed, args.quick).replace(".safetensors", ".json")
        if args.report_only and not os.path.exists(info_path):
            continue
        if not (os.path.exists(info_path) and os.path.exists(dense_path(seed, args.quick))):
            _worker(_python_for("secateurs", "l1"), ["dense", str(seed), mode])
        dense[seed] = json.load(open(info_path))
        print(f"dense seed {seed}: acc {dense[seed]['acc']:.4f} (trained in {dense[seed]['train_s']:.0f} s)", flush=True)

    errors = {}
    for seed in seeds:
        for method in args.methods:
            for ratio in args.ratios:
                for lib in args.libs:
                    key = _key(lib, method, ratio, seed)
                    if key in results or args.report_only:
                        continue
                    if lib == "secateurs" and not hasattr(secateurs, METHODS[method][0]):
                        errors[key] = f"secateurs has no {METHODS[method][0]} yet"
                        continue
                    t0 = time.perf_counter()
                    try:
                        r = _worker(_python_for(lib, method), [lib, method, str(ratio), str(seed), mode])
                    except RuntimeError as e:
                        errors[key] = str(e)
                        print(f"FAILED {key}: {e}", flush=True)
                        continue
                    results[key] = r
                    with open(results_path, "w") as f:
                        json.dump(results, f, indent=1, sort_keys=True)
                    print(f"{key:32s} acc {r['acc']:.4f} (before fine-tune, 2k test images {r['acc_before_ft_2k']:.4f}) "
                          f"prune {r['prune_s']:6.2f} s  fine-tune {r['ft_s']:5.1f} s  "
                          f"masked {r['channels_pruned']}/{r['channels']}  [{time.perf_counter() - t0:.0f} s wall]",
                          flush=True)
    for key, why in errors.items():
        print(f"missing {key}: {why.splitlines()[0]}")

    methods = [m for m in METHODS if any(k.split("|")[1] == m for k in results)]
    text_table = table(results, dense, methods, seeds)
    print(text_table)
    if args.quick or args.no_docs:
        return
    expected = len(args.methods) * len(args.ratios) * len(args.libs) * len(seeds)
    have = sum(1 for k in results if k.split("|")[1] in args.methods and int(k.split("|")[3]) in seeds)
    partial = "" if have >= expected else (
        f"\nPartial run: {have} of {expected} cells finished; a cell marked (n=k) has k of {len(seeds)} seeds.\n")
    hashes = sorted({r["secateurs_src"] for r in results.values() if r.get("secateurs_src")})
    if len(hashes) > 1:
        partial += (f"\nThe secateurs sources changed during the run (hashes of secateurs/*.py in results.json: "
                    f"{', '.join(hashes)}).\n")
    versions = sorted({f"{r['lib']} {r['version']}" for r in results.values()})
    b = budget
    text = f"""## Accuracy after pruning on Fashion-MNIST (issue 4)

Command: `.venv-bench/bin/python bench/bench_accuracy.py --seeds {' '.join(map(str, seeds))}` (run {time.strftime('%Y-%m-%d')}, source revision {revision()})
Machine: {machine()}; {', '.join(versions)} (NNI 3.0 for L1/L2/FPGM/Slim/TaylorFO; APoZ and MeanRank
were dropped from NNI 3.0 and run under NNI 2.10 in `.venv-nni210`).
Data: full Fashion-MNIST from the Debian package `dataset-fashion-mnist` (60,000 train / 10,000 test).
Model: small CNN, conv 1->32->64->64 (3x3, BatchNorm, ReLU, max-pool after the first two), global
average pool, Linear 64->10 (57k parameters). Dense training per seed: {b['dense_epochs']} epochs, batch
{b['dense_batch']}, SGD lr {b['dense_lr']} (decayed linearly to 0) momentum 0.9; every cell starts from that seed's checkpoint.
Pruning: ratio of the output channels of every Conv2d (Linear untouched); Slim: the same ratio of the
BatchNorm2d scale factors ranked across layers (`global_group_id` for NNI 3.0). secateurs gets
`dummy_input`, so its masks cover the BatchNorm channels after a pruned filter; NNI's masks cover the
pruned tensors only (a masked filter's BatchNorm bias still reaches the next layer). Data-driven methods
(Slim, APoZ, MeanRank, TaylorFO): {b['stat_steps']} statistics steps of batch {b['stat_batch']} (SGD lr
{b['stat_lr']} momentum 0.9, the same batches for every method), through each library's `TorchEvaluator`.
Fine-tuning, the same for every method: {b['ft_steps']} steps of batch {b['ft_batch']} ({b['ft_steps'] * b['ft_batch']:,}
images, seeded sample), SGD lr {b['ft_lr']} momentum 0.9. Accuracy = top-1 of the masked model on the
10k test set after fine-tuning, mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}.
`prune s` = construction + `compress()` (statistics steps included), mean over seeds; each cell ran in
a fresh process. Another job shared the 2 cores during parts of the run, so the
seconds are noisy (results.json also keeps CPU seconds per cell).

Notes on the peers, read from their source: NNI 2.10's activation pruners stop recording once the
count of *samples* reaches `training_steps`, so with batch {b['stat_batch']} they rank channels on the first batch
only (the {b['stat_steps']} steps still train the model). NNI 3.0's Slim puts its L1 penalty on extra
per-channel factors trained by its own Adam (lr 1e-2) and ranks by those factors; secateurs puts it
on the BatchNorm scales themselves (the paper's setting), stepped by the user's optimizer, as
`regular_scale` x mean |gamma| over the selected channels, and ranks by |gamma| across layers. With
only {b['stat_steps']} statistics steps the scales are barely sparsified, so a global ranking of raw
|gamma| prunes some layers much harder than others, which is what the wide Slim spreads show.

""" + partial + text_table + "\n"
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "accuracy", text)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main(sys.argv[1:])
