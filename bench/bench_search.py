"""Search pruners on Fashion-MNIST: SimulatedAnnealing, AutoCompress and AMC against uniform L1
at the same FLOPs, after the same fine-tuning; NNI 2.10's three beside them.

Two models: the small CNN of bench/_fmnist.py (conv1, conv2, fc1 searched) and torchvision's
resnet18 at 32x32 input (Fashion-MNIST padded to 32x32, the gray channel repeated three
times; every Conv2d searched, residual groups included). Two budgets: 50% and 75% of the
dense model's FLOPs removed, counted by ``count_flops_params`` on the model that
``ModelSpeedup`` builds from the masks.

Per seed the dense model is trained once; every cell then starts from it, in a fresh
process with one torch thread:

  uniform   every searched layer at the same ratio, scaled to meet the FLOPs budget exactly
            (what SimulatedAnnealingPruner starts from before any search; L1 ranking)
  sa        SimulatedAnnealingPruner, l1, target="flops", the default schedule (17 evaluations)
  amc       AMCPruner, l1, target="flops", a short run (``amc_episodes``; warm-up a quarter)
  ac        AutoCompressPruner, 2 rounds of (SA with 9 evaluations, ADMM 2 x ``ac_steps`` steps)

then every cell fine-tunes ``ft_steps`` SGD steps (the same batches) and is scored on the 10k test
images. Candidates are scored by accuracy on 2,000 (CNN) / 300 (resnet18) held-out training images.

NNI 2.10 (nni3.0 dropped these pruners): its SimulatedAnnealingPruner and AutoCompressPruner have
no FLOPs budget, only a weight-sparsity one, so they get the weight sparsity (output channels of
the searched layers, as NNI counts it) of the uniform allocation above; the FLOPs they reach are
written down. Its AMCPruner has target="flops" and gets the same budget as ours.

    apt-get update && apt-get install -y dataset-fashion-mnist
    make bench-venv                                    # .venv-nni210 (NNI 2.10)
    .venv/bin/python bench/bench_search.py             # 3 seeds, both models; writes docs/benchmarks.md
    .venv/bin/python bench/bench_search.py --quick     # tiny budgets, 1 seed, CNN only, no docs

Results are kept in out/bench_search/results.json; cells of the same source revision are reused
when the command is run again (so a run that was stopped picks up where it was).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import _fmnist as fm
from bench_iterative import _ms, _training_func

OUT = os.path.join(ROOT, "out", "bench_search")
PY = {"secateurs": os.path.join(ROOT, ".venv", "bin", "python"),
      "nni210": os.path.join(ROOT, ".venv-nni210", "bin", "python")}
RATIOS = (0.5, 0.75)
METHODS = ("uniform", "sa", "amc", "ac")
NNI_METHODS = ("sa", "amc", "ac")
LABEL = {"uniform": "uniform L1", "sa": "SimulatedAnnealing", "amc": "AMC", "ac": "AutoCompress"}

N_TRAIN, N_VAL = 10_000, 2_000  # the training stream; the held-out images that score candidates
FULL = {
    "cnn": {"batch": 128, "dense_steps": 600, "dense_lr": 0.05, "ft_steps": 200, "ft_lr": 0.01, "n_score": 2000,
            "amc_episodes": 40, "ac_steps": 25},
    "resnet18": {"batch": 64, "dense_steps": 300, "dense_lr": 0.05, "ft_steps": 80, "ft_lr": 0.01, "n_score": 300,
                 "amc_episodes": 24, "ac_steps": 10},
}
QUICK = {name: {**b, "dense_steps": 40, "ft_steps": 10, "n_score": 300, "amc_episodes": 4, "ac_steps": 3}
         for name, b in FULL.items()}
SA_EVALS_AC = 9  # AutoCompress's searches: T from 100 to 20 at cool_down_rate 0.8 (8 steps + the start)
AC_ROUNDS, AC_ADMM_ITERS, RHO = 2, 2, 1e-4
NNI_AMC_MAX = 0.9  # NNI 2.10's AMC requires a max_sparsity_per_layer; secateurs' needs none (never empties)


# ----------------------------------------------------------------------------- pieces (both venvs)


def build(model_name: str):
    if model_name == "cnn":
        return fm.build_model()
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def searched_config(model_name: str, ratio: float, key: str = "sparse_ratio") -> list[dict]:
    if model_name == "cnn":
        return [{"op_names": ["conv1", "conv2", "fc1"], key: ratio}]
    return [{"op_types": ["Conv2d"], key: ratio}]


def data(model_name: str, n_test: int | None = None):
    """(train x, train y, val x, val y, test x, test y) as float tensors in the model's input form."""
    import torch.nn.functional as F

    x, y = fm.load_split(os.path.join(OUT, "data"), "train")
    xt, yt = fm.load_split(os.path.join(OUT, "data"), "test")
    if n_test:
        xt, yt = xt[:n_test], yt[:n_test]
    if model_name == "resnet18":
        def to32(t):
            return F.pad(t, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()

        x, xt = to32(x), to32(xt)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_VAL], y[N_TRAIN:N_TRAIN + N_VAL], xt, yt


def dummy_of(model_name: str):
    import torch

    return torch.randn(1, 1, 28, 28) if model_name == "cnn" else torch.randn(1, 3, 32, 32)


def _loss(batch, model):
    import torch.nn.functional as F

    return F.cross_entropy(model(batch[0]), batch[1])


def _paths(model_name: str, seed: int, quick: bool) -> dict:
    tag = f"{model_name}_seed{seed}{'_quick' if quick else ''}"
    return {"dense": os.path.join(OUT, f"dense_{tag}.safetensors"), "info": os.path.join(OUT, f"dense_{tag}.json")}


class Scorer:
    """The search's score: accuracy on held-out images; counts its calls and their time.

    A model with BatchNorm is scored on a copy whose BatchNorm statistics are first re-estimated
    on the same images (one pass in train mode, cumulative averages): a pruned resnet18 keeps the
    dense model's running statistics, which put every candidate at chance level at 75% of the FLOPs,
    and a search that cannot tell candidates apart is no search. The same for every library."""

    def __init__(self, x, y) -> None:
        self.x, self.y, self.calls, self.seconds = x, y, 0, 0.0

    def __call__(self, model) -> float:
        import torch

        t0 = time.perf_counter()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:
            model = copy.deepcopy(model)
            for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
                bn.reset_running_stats()
                bn.momentum = None
            model.train()
            with torch.no_grad():
                for i in range(0, len(self.x), 250):
                    model(self.x[i:i + 250])
        acc = fm.accuracy(model, self.x, self.y)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return acc


def flops_of(model_name: str, dense_state: dict, masks: dict) -> dict:
    """FLOPs and parameters of the model ModelSpeedup builds from ``masks`` over the dense model,
    as fractions of the dense model's (secateurs' counter, for every library's masks)."""
    import torch

    from secateurs import ModelSpeedup, count_flops_params

    x = dummy_of(model_name)
    dense = build(model_name).eval()
    dense.load_state_dict(dense_state)
    f0, p0 = count_flops_params(dense, x)[:2]
    pruned = copy.deepcopy(dense)
    masks = {n: {t: m.detach().to(torch.bool) for t, m in d.items()} for n, d in masks.items() if d}
    ModelSpeedup(pruned, x, masks).speedup_model()
    f1, p1 = count_flops_params(pruned, x)[:2]
    return {"flops_removed": 1 - f1 / f0, "params_removed": 1 - p1 / p0}


def nni_weight_budget(model_name: str, ratio: float) -> float:
    """The weight sparsity of the uniform allocation at ``ratio`` of the FLOPs, counted as NNI counts
    a channel pruner's sparsity: the pruned output channels' share of the searched weights."""
    from secateurs import SimulatedAnnealingPruner

    model = build(model_name).eval()
    pruner = SimulatedAnnealingPruner(model, searched_config(model_name, ratio), lambda m: 0.0,
                                      pruning_algorithm="l1", target="flops", dummy_input=dummy_of(model_name))
    space = pruner.space
    counts = space.fit([ratio] * len(space.variables))
    masks = space.masks(counts)
    mods = dict(model.named_modules())
    gone = total = 0
    for t in pruner.targets:
        w = mods[t.module_name].weight
        rows = masks[t.module_name]["weight"].reshape(w.shape[0], -1).any(1)
        gone += int((~rows).sum()) * (w[0].numel())
        total += w.numel()
    return gone / total


# ----------------------------------------------------------------------------- workers


def run_dense(model_name: str, seed: int, quick: bool) -> dict:
    import torch
    from safetensors.torch import save_file

    b, p = (QUICK if quick else FULL)[model_name], _paths(model_name, seed, quick)
    torch.set_num_threads(1)
    x, y, _, _, xt, yt = data(model_name, 2000 if quick else None)
    torch.manual_seed(seed)
    model = build(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=b["dense_lr"], momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / b["dense_steps"])
    stream = fm.BatchStream(x, y, b["batch"], seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(b["dense_steps"]):
        opt.zero_grad()
        _loss(stream.next(), model).backward()
        opt.step()
        sched.step()
    info = {"model": model_name, "seed": seed, "train_s": time.perf_counter() - t0, "steps": b["dense_steps"],
            "acc": fm.accuracy(model, xt, yt)}
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, p["dense"])
    with open(p["info"], "w") as f:
        json.dump(info, f)
    return info


def _run_secateurs(method, model_name, ratio, seed, model, stream, scorer, b):
    import torch

    from secateurs import AMCPruner, AutoCompressPruner, SimulatedAnnealingPruner, TorchEvaluator
    from secateurs.masks import attach_masks

    cfg, x = searched_config(model_name, ratio), dummy_of(model_name)
    if method == "uniform":
        pruner = SimulatedAnnealingPruner(model, cfg, scorer, pruning_algorithm="l1", target="flops", dummy_input=x)
        masks = pruner.calculate_masks()
        attach_masks(model, masks)
        return masks, {"evaluations": 0}
    if method == "sa":
        pruner = SimulatedAnnealingPruner(model, cfg, scorer, pruning_algorithm="l1", target="flops", dummy_input=x,
                                          seed=seed, progress=False)
        _, masks = pruner.compress()
        return masks, {"best_search_score": pruner.get_best_result()[1]}
    if method == "amc":
        pruner = AMCPruner(model, cfg, scorer, total_episode=b["amc_episodes"], target="flops",
                           pruning_algorithm="l1", dummy_input=x, seed=seed, progress=False)
        _, masks = pruner.compress()
        return masks, {"best_search_score": pruner.get_best_result()[1]}
    if method == "ac":
        evaluator = TorchEvaluator(_training_func(stream, b["ac_steps"], b["ac_steps"]),
                                   torch.optim.SGD(model.parameters(), lr=b["ft_lr"], momentum=0.9), _loss,
                                   dummy_input=x, evaluating_func=scorer)
        pruner = AutoCompressPruner(model, cfg, evaluator, total_iteration=AC_ROUNDS,
                                    admm_params={"iterations": AC_ADMM_ITERS, "training_steps": b["ac_steps"],
                                                 "rho": RHO},
                                    sa_params={"target": "flops", "pruning_algorithm": "l1", "cool_down_rate": 0.8},
                                    seed=seed, progress=False)
        _, masks = pruner.compress()
        return masks, {"admm_steps": AC_ROUNDS * AC_ADMM_ITERS * b["ac_steps"]}
    raise ValueError(f"unknown secateurs method {method!r}")


def _run_nni210(method, model_name, ratio, seed, model, stream, scorer, b):
    """Returns (masks over the dense architecture or None, extra); a compact model in extra["model"]."""
    import nni
    import torch
    import torch.nn.functional as F
    from nni.compression.pytorch import TorchEvaluator
    from nni.compression.pytorch.pruning import AMCPruner, AutoCompressPruner, SimulatedAnnealingPruner

    # NNI 2.10's iterative pruners torch.save whole models to their log folder and load them back;
    # torch >= 2.6 refuses that by default. Its own files only, in a temporary folder.
    torch.load = functools.partial(torch.load, weights_only=False)
    x = dummy_of(model_name)
    with tempfile.TemporaryDirectory(dir=OUT) as log_dir:
        if method == "amc":
            cfg = searched_config(model_name, ratio, "total_sparsity")
            # NNI's AMC needs both: without op_types it selects nothing, without max_sparsity_per_layer its
            # action correction indexes a float (TypeError).
            cfg[0]["op_types"] = cfg[0].get("op_types", ["Conv2d", "Linear"])
            cfg[0]["max_sparsity_per_layer"] = NNI_AMC_MAX
            pruner = AMCPruner(b["amc_episodes"], model, cfg, dummy_input=x, evaluator=scorer, pruning_algorithm="l1",
                               log_dir=log_dir, keep_intermediate_result=False,
                               ddpg_params={"warmup": b["amc_episodes"] // 4}, target="flops")
            pruner.compress()
            _, best, _, score, _ = pruner.get_best_result()
            return None, {"model": best, "best_search_score": score}
        budget = nni_weight_budget(model_name, ratio)
        cfg = searched_config(model_name, budget, "total_sparsity")
        if method == "sa":
            pruner = SimulatedAnnealingPruner(model, cfg, evaluator=scorer, pruning_algorithm="l1", log_dir=log_dir,
                                              keep_intermediate_result=False)
            pruner.compress()
            _, best, masks, score, _ = pruner.get_best_result()
            return masks, {"model": best, "best_search_score": score, "weight_budget": budget}
        if method == "ac":
            loop = _training_func(stream, b["ac_steps"], b["ac_steps"])
            evaluator = TorchEvaluator(functools.partial(loop, criterion_form=True),
                                       nni.trace(torch.optim.SGD)(model.parameters(), lr=b["ft_lr"], momentum=0.9),
                                       F.cross_entropy, dummy_input=x, evaluating_func=scorer)
            pruner = AutoCompressPruner(model, cfg, total_iteration=AC_ROUNDS,
                                        admm_params={"evaluator": evaluator, "iterations": AC_ADMM_ITERS,
                                                     "training_epochs": 1},
                                        sa_params={"evaluator": evaluator, "pruning_algorithm": "l1",
                                                   "cool_down_rate": 0.8},
                                        log_dir=log_dir, keep_intermediate_result=False, evaluator=evaluator)
            pruner.compress()
            _, best, masks, score, _ = pruner.get_best_result()
            finite = all(bool(t.isfinite().all()) for t in best.parameters())
            return masks, {"model": best, "weight_budget": budget, "finite_after_admm": finite,
                           "admm_steps": AC_ROUNDS * AC_ADMM_ITERS * b["ac_steps"]}
    raise ValueError(f"unknown NNI 2.10 method {method!r}")


def run_cell(lib: str, method: str, model_name: str, ratio: float, seed: int, quick: bool) -> dict:
    import torch
    from safetensors.torch import load_file

    b, p = (QUICK if quick else FULL)[model_name], _paths(model_name, seed, quick)
    torch.set_num_threads(1)
    x, y, xv, yv, xt, yt = data(model_name, 2000 if quick else None)
    dense_state = load_file(p["dense"])
    import random

    import numpy as np

    # NNI's searches draw from numpy's and Python's global generators; seed them as torch's.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build(model_name)
    model.load_state_dict(dense_state)
    stream = fm.BatchStream(x, y, b["batch"], 20_000 + seed)  # the same batches for every cell of a seed
    scorer = Scorer(xv[:b["n_score"]], yv[:b["n_score"]])
    run = {"secateurs": _run_secateurs, "nni210": _run_nni210}[lib]
    t0 = time.perf_counter()
    masks, extra = run(method, model_name, ratio, seed, model, stream, scorer, b)
    search_s = time.perf_counter() - t0
    tuned = extra.pop("model", model)
    out = {"lib": lib, "method": method, "model": model_name, "ratio": ratio, "seed": seed,
           "evaluations": scorer.calls, "search_s": search_s, "scoring_s": scorer.seconds, **extra}
    if lib == "secateurs":
        from secateurs.masks import get_masks

        masks = get_masks(model)
        out.update(flops_of(model_name, dense_state, masks))
    elif masks is not None:  # NNI's masks over the dense architecture; its best model keeps the weights
        out.update(flops_of(model_name, dense_state, masks))
        state = {k: v for k, v in tuned.state_dict().items()}
        tuned = build(model_name)
        tuned.load_state_dict(state)
        fm.attach_fixed_masks(tuned, {n: {"weight": d["weight"], **({"bias": d["bias"]} if "bias" in d else {})}
                                      for n, d in masks.items()})
    else:  # NNI's AMC hands back the compact (sped-up) model
        from secateurs import count_flops_params

        xin = dummy_of(model_name)
        dense = build(model_name).eval()
        dense.load_state_dict(dense_state)
        f0, p0 = count_flops_params(dense, xin)[:2]
        f1, p1 = count_flops_params(tuned.eval(), xin)[:2]
        out.update({"flops_removed": 1 - f1 / f0, "params_removed": 1 - p1 / p0})
    out["acc_before_ft"] = fm.accuracy(tuned, xt[:2000], yt[:2000])
    t1 = time.perf_counter()
    fm.train_steps(tuned, torch.optim.SGD(tuned.parameters(), lr=b["ft_lr"], momentum=0.9), _loss, stream,
                   b["ft_steps"])
    out["ft_s"] = time.perf_counter() - t1
    out["acc"] = fm.accuracy(tuned, xt, yt)
    if lib == "secateurs":
        import secateurs

        out["version"] = secateurs.__version__
    else:
        import nni

        out["version"] = nni.__version__
    return out


# ----------------------------------------------------------------------------- orchestration


def _worker(python: str, args: list[str]) -> dict:
    return fm.run_worker(python, os.path.abspath(__file__), args, ROOT)


def cells(models: list[str], seeds: list[int], nni_seeds: dict[str, list[int]]) -> list[tuple]:
    """(lib, method, model, ratio, seed) in run order: per seed and budget, the methods in a rotated
    order, NNI's cells interleaved with ours."""
    out = []
    for seed in seeds:
        for model_name in models:
            for ratio in RATIOS:
                row = [("secateurs", m) for m in METHODS]
                if seed in nni_seeds[model_name]:
                    row = [c for pair in zip(row, [("nni210", m) for m in NNI_METHODS] + [None]) for c in pair if c]
                k = seed % len(row)
                out += [(lib, m, model_name, ratio, seed) for lib, m in row[k:] + row[:k]]
    return out


def report(results: dict, errors: dict, dense: dict, models: list[str], seeds: list[int], quick: bool,
           rev: str, command: str) -> str:
    from bench_foundation import machine

    budgets = QUICK if quick else FULL
    results = {k: r for k, r in results.items() if r.get("model") in models}  # the section's models only
    title = "" if len(models) > 1 else f": {'small CNN' if models[0] == 'cnn' else models[0]}"
    lines = [
        f"## Search pruners on Fashion-MNIST (issue 9){title}",
        "",
        f"Command: `{command}`; revision {rev}; {machine()}.",
        "",
        "Each cell: the dense model of its seed, the method, then the same fine-tuning (SGD, momentum 0.9, the same",
        "batches), test accuracy on the 10,000 Fashion-MNIST test images (mean ± standard deviation over the seeds).",
        "*FLOPs removed* is counted by `count_flops_params` on the model `ModelSpeedup` builds from the cell's masks",
        "(for NNI's AMC, on the compact model it returns). *Evaluations*: calls of the search's score (accuracy on",
        "held-out training images; for resnet18 after re-estimating its BatchNorm statistics on them). *Search s*:",
        "wall seconds of the method (search, and ADMM training for AutoCompress), of which *scoring s* went to",
        "scoring; one torch thread per cell, other work ran on the machine at the",
        "same time, so seconds compare only within this table.",
        "",
    ]
    for model_name in models:
        b = budgets[model_name]
        accs = [100 * dense[(model_name, s)]["acc"] for s in seeds if (model_name, s) in dense]
        what = ("small CNN (conv1, conv2, fc1 searched)" if model_name == "cnn"
                else "torchvision resnet18 at 32x32 (every Conv2d searched, residual groups shared)")
        lines += [f"### {what}", "",
                  f"Dense: {_ms(accs)} % after {b['dense_steps']} steps (batch {b['batch']}); fine-tuning "
                  f"{b['ft_steps']} steps at lr {b['ft_lr']}; AMC {b['amc_episodes']} episodes; AutoCompress "
                  f"{AC_ROUNDS} rounds x ({SA_EVALS_AC}-candidate search + {AC_ADMM_ITERS} x {b['ac_steps']} ADMM "
                  f"steps); candidates scored on {b['n_score']} held-out images.", "",
                  "| FLOPs budget | method | library | accuracy % | before fine-tuning % | FLOPs removed | params "
                  "removed | evaluations | search s | scoring s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for ratio in RATIOS:
            for method in METHODS:
                for lib in ("secateurs", "nni210"):
                    if lib == "nni210" and method not in NNI_METHODS:
                        continue
                    rs = [results[k] for s in seeds if (k := f"{lib}|{method}|{model_name}|{ratio}|{s}") in results]
                    errs = [errors[k] for s in seeds if (k := f"{lib}|{method}|{model_name}|{ratio}|{s}") in errors]
                    name = "secateurs" if lib == "secateurs" else "NNI 2.10"
                    if not rs:
                        why = f"failed: {errs[0].splitlines()[0][:120]}" if errs else "not run"
                        lines.append(f"| {ratio:.0%} | {LABEL[method]} | {name} | {why} | | | | | | |")
                        continue
                    note = f" ({len(rs)} seeds)" if len(rs) != len(seeds) else ""
                    cols = [_ms([100 * r["acc"] for r in rs]) + note,
                            _ms([100 * r["acc_before_ft"] for r in rs], digits=1)]
                    cols += [_ms([r[k] for r in rs], digits=d) for k, d in (
                        ("flops_removed", 4), ("params_removed", 3), ("evaluations", 0), ("search_s", 0),
                        ("scoring_s", 0))]
                    lines.append(f"| {ratio:.0%} | {LABEL[method]} | {name} | " + " | ".join(cols) + " |")
        lines.append("")
    # What the numbers say, computed, not written in advance.
    lines += ["### Searched against uniform, same FLOPs, same fine-tuning", ""]
    for model_name in models:
        for ratio in RATIOS:
            uni = {s: results[k]["acc"] for s in seeds
                   if (k := f"secateurs|uniform|{model_name}|{ratio}|{s}") in results}
            parts = []
            for method in ("sa", "amc", "ac"):
                acc = {s: results[k]["acc"] for s in seeds
                       if (k := f"secateurs|{method}|{model_name}|{ratio}|{s}") in results}
                common = sorted(set(uni) & set(acc))
                if not common:
                    continue
                diff = [100 * (acc[s] - uni[s]) for s in common]
                wins = sum(d > 0 for d in diff)
                parts.append(f"{LABEL[method]} {statistics.mean(diff):+.2f} points (better in {wins} of "
                             f"{len(common)} seeds)")
            lines.append(f"- {model_name} at {ratio:.0%} FLOPs removed: " + ("; ".join(parts) or "not measured") + ".")
    over = [f"{k} ({r['flops_removed']:.4f})" for k, r in results.items()
            if r["lib"] == "secateurs" and not r["ratio"] <= r["flops_removed"] + 1e-9]
    lines += ["", "Budget check: secateurs cells that removed less than the asked FLOPs: "
              + (", ".join(over) if over else "none") + "."]
    nonfinite = [k for k, r in results.items() if r.get("finite_after_admm") is False]
    if any(r["lib"] == "nni210" for r in results.values()):
        lines += [
            "",
            "NNI 2.10's SimulatedAnnealing and AutoCompress take only a weight-sparsity budget; they were given the",
            "weight sparsity of the uniform allocation (pruned output channels' share of the searched weights): "
            + ", ".join(sorted({f"{r['model']} {r['ratio']:.0%}: {r['weight_budget']:.4f}" for r in results.values()
                                if "weight_budget" in r})) + ". The FLOPs they removed are what the table shows.",
            f"Its AMC gets `target='flops'` and the same ratio as ours, with `max_sparsity_per_layer` {NNI_AMC_MAX}",
            "(it fails without one). NNI's workers call `torch.load` with",
            "`weights_only=False` for the models NNI writes to its own log folder (torch >= 2.6 refuses them",
            "otherwise). NNI 2.10 AutoCompress results with NaN or infinite weights after its ADMM: "
            + (", ".join(nonfinite) if nonfinite else "none") + ".",
        ]
    if errors:
        lines += ["", "Cells that failed (first line of the error):", ""]
        lines += [f"- `{k}`: {v.splitlines()[0][:200]}" for k, v in sorted(errors.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        if argv[1] == "dense":
            out = run_dense(argv[2], int(argv[3]), argv[4] == "quick")
        else:
            lib, method, model_name, ratio, seed, mode = argv[1:7]
            out = run_cell(lib, method, model_name, float(ratio), int(seed), mode == "quick")
        print("RESULT " + json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet18"], choices=["cnn", "resnet18"])
    ap.add_argument("--quick", action="store_true", help="seed 0, CNN, tiny budgets, no docs")
    ap.add_argument("--no-nni", action="store_true", help="skip NNI 2.10's cells")
    ap.add_argument("--nni-resnet18-seeds", type=int, nargs="+", default=None,
                    help="NNI 2.10's resnet18 cells for these seeds only (default: every seed)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--jobs", type=int, default=1, help="cells at a time")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the section from the cells already in results.json (of this revision, "
                         "or of --revision)")
    ap.add_argument("--revision", default=None, help="with --report-only: the revision whose cells to report")
    args = ap.parse_args(argv)
    from bench_foundation import revision, write_section

    seeds = [0] if args.quick else args.seeds
    models = ["cnn"] if args.quick else args.models
    mode = "quick" if args.quick else "full"
    nni = not args.no_nni and os.path.exists(PY["nni210"])
    rev = args.revision if args.report_only and args.revision else revision()
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(os.path.join(OUT, "data", "test_y.npy")):
        fm.write_npy(os.path.join(OUT, "data"), N_TRAIN + N_VAL)
    results_path = os.path.join(OUT, f"results{'_quick' if args.quick else ''}.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    results = {k: v for k, v in results.items() if v.get("revision") == rev and "uncommitted" not in rev}
    from concurrent.futures import ThreadPoolExecutor

    dense, errors = {}, {}
    t_all = time.perf_counter()

    def one_dense(key):
        model_name, seed = key
        p = _paths(model_name, seed, args.quick)
        if args.report_only and not os.path.exists(p["info"]):
            return
        if not args.report_only and not (os.path.exists(p["info"]) and os.path.exists(p["dense"])):
            _worker(PY["secateurs"], ["dense", model_name, str(seed), mode])
        with open(p["info"]) as f:
            dense[key] = json.load(f)
        print(f"dense {model_name} seed {seed}: acc {dense[key]['acc']:.4f} ({dense[key]['train_s']:.0f} s)",
              flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one_dense, [(m, s) for s in seeds for m in models]))

    def one(cell) -> None:
        lib, method, model_name, ratio, seed = cell
        key = f"{lib}|{method}|{model_name}|{ratio}|{seed}"
        t0 = time.perf_counter()
        try:
            r = _worker(PY[lib], [lib, method, model_name, str(ratio), str(seed), mode])
        except RuntimeError as e:
            errors[key] = str(e)
            print(f"FAILED {key}: {e}", flush=True)
            return
        r["revision"] = rev
        results[key] = r
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        print(f"{key:40s} acc {r['acc']:.4f} (before ft {r['acc_before_ft']:.4f}) flops -{r['flops_removed']:.4f} "
              f"evals {r['evaluations']} search {r['search_s']:.0f} s [{time.perf_counter() - t0:.0f} s wall]",
              flush=True)

    nni_seeds = {"cnn": seeds if nni else [],
                 "resnet18": [] if not nni else seeds if args.nni_resnet18_seeds is None else args.nni_resnet18_seeds}
    todo = [c for c in cells(models, seeds, nni_seeds) if "|".join(map(str, c)) not in results]
    if args.report_only:
        todo = []
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    print(f"all cells: {time.perf_counter() - t_all:.0f} s", flush=True)
    shown = [a for i, a in enumerate(argv) if a != "--report-only" and a != "--revision"
             and not (i and argv[i - 1] == "--revision")]  # the command that ran the cells
    command = " ".join([".venv/bin/python bench/bench_search.py", *shown])
    text = report(results, errors, dense, models, seeds, args.quick, rev, command)
    print(text)
    if args.quick or args.no_docs:
        return
    # One model alone gets a section of its own, so that its cells and revision stand apart.
    key = "search" if len(models) > 1 else f"search-{models[0]}"
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), key, text)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main(sys.argv[1:])
