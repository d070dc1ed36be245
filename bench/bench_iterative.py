"""Iterative pruners on Fashion-MNIST: secateurs vs NNI 3.0 / NNI 2.10, same training budget.

Three comparisons, each over the same seeds, every cell in a fresh process (1 torch thread),
cells of one seed interleaved so machine drift hits every method alike:

  A. scheduled vs one-shot, from a dense model pretrained once per seed: AGPPruner and
     LinearPruner around LevelPruner (90% of the weights) and L1NormPruner (75% of the
     Conv2d output channels), secateurs and NNI 3.0, against one-shot pruning + fine-tuning;
     every cell trains the same B optimizer steps after the dense starting point.
  B. LotteryTicketPruner at 80% and 95% of the weights from the seed's random init (no
     pretraining; rewind to init): secateurs and NNI 2.10; the ticket (init * mask) is then
     trained S steps, as is the paper's control, the same masks on a differently seeded
     fresh init (random re-initialisation).
  C. ADMMPruner at 90% (fine-grained) then fine-tuning, secateurs and NNI 2.10, against
     one-shot Level 90% (the cell of A: the same B steps).

The dense weights and inits travel between processes as safetensors, the data as .npy.
Time is wall (and CPU) seconds of pruning + training (evaluation excluded); memory is the
growth of the process's peak RSS (getrusage ru_maxrss) over that span, above the peak
after imports, data and model were loaded.

    apt-get update && apt-get install -y dataset-fashion-mnist
    make bench-venv                                      # .venv-bench (NNI 3.0), .venv-nni210 (NNI 2.10)
    .venv/bin/python bench/bench_iterative.py --seeds 0 1 2    # writes its section of docs/benchmarks.md
    .venv/bin/python bench/bench_iterative.py --quick          # 1 seed, tiny budget, no docs

Results are kept in out/bench_iterative/results.json (results_quick.json for --quick); cells
run on the same source revision are reused when the command is run again.
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

OUT = os.path.join(ROOT, "out", "bench_iterative")
PY = {
    "secateurs": os.path.join(ROOT, ".venv", "bin", "python"),
    "nni3": os.path.join(ROOT, ".venv-bench", "bin", "python"),
    "nni210": os.path.join(ROOT, ".venv-nni210", "bin", "python"),
}
LIB_NAMES = {"secateurs": "secateurs", "nni3": "NNI 3.0", "nni210": "NNI 2.10"}

LEVEL_RATIO, L1_RATIO, ADMM_RATIO, LT_RATIOS = 0.9, 0.75, 0.9, (0.8, 0.95)
# Weights pruned by Level / LotteryTicket / ADMM: every Conv2d and Linear but the classifier.
WEIGHT_LAYERS = ("conv1", "conv2", "fc1")
CHANNEL_LAYERS = ("conv1", "conv2")

FULL = {
    "n_train": 12_000, "batch": 128, "n_test": 10_000,
    "dense_steps": 600, "dense_lr": 0.05,        # pretraining (lr decayed linearly to 0)
    "steps": 300, "lr": 0.01,                    # A and C: every method trains these steps after the dense point
    "interval": 20, "times": 10,                 # A: rounds at steps 20, 40, .., 200, then 100 steps fine-tuning
    "lt_ratios": LT_RATIOS, "lt_rounds": 5, "lt_steps": 100, "lt_lr": 0.05,  # B: 5 rounds of 100 steps, then the ticket trains 100
    "admm_iters": 5, "admm_steps": 40, "rho": 1e-4,  # C: 5 x 40 ADMM steps, then 100 fine-tuning steps
}
QUICK = {**FULL, "n_test": 2_000, "dense_steps": 60, "steps": 30, "interval": 4, "times": 5,
         "lt_ratios": (0.8,), "lt_rounds": 2, "lt_steps": 15, "admm_iters": 2, "admm_steps": 5}


def cells_of_seed(seed: int, b: dict) -> list[tuple[str, str]]:
    """(lib, method) cells of one seed, in run order (libraries alternate; a ticket's control after it)."""
    a = [(lib, f"{sched}-{what}") for what in ("level", "l1") for sched in ("agp", "linear")
         for lib in ("secateurs", "nni3")]
    a += [("secateurs", "oneshot-level"), ("secateurs", "oneshot-l1")]
    lt = []
    for r in b["lt_ratios"]:
        lt += [("secateurs", f"lt-{r}"), ("nni210", f"lt-{r}"), ("secateurs", f"reinit-{r}")]
    lt.append(("secateurs", "dense-lt"))
    c = [("secateurs", "admm"), ("nni210", "admm"), ("nni210", "admm-paper")]
    cells = a + lt + c
    # Rotate the order per seed so no method always runs first (or last) in a seed.
    k = (seed * 7) % len(cells)
    rotated = cells[k:] + cells[:k]
    # A control needs its ticket's masks: keep each reinit after its lt cell.
    for r in b["lt_ratios"]:
        i, j = rotated.index(("secateurs", f"lt-{r}")), rotated.index(("secateurs", f"reinit-{r}"))
        if j < i:
            rotated.insert(i, rotated.pop(j))
    return rotated


# ----------------------------------------------------------------------------- helpers (all venvs)


def _paths(seed: int, quick: bool) -> dict:
    tag = f"seed{seed}{'_quick' if quick else ''}"
    return {"dense": os.path.join(OUT, f"dense_{tag}.safetensors"), "init": os.path.join(OUT, f"init_{tag}.safetensors"),
            "reinit": os.path.join(OUT, f"reinit_{tag}.safetensors"), "info": os.path.join(OUT, f"dense_{tag}.json"),
            "masks": lambda r: os.path.join(OUT, f"lt_masks_{r}_{tag}.safetensors")}


class StepCounter:
    """Counts every optimizer step in the process. A global hook, as NNI 2.10 builds its own optimizers
    from the traced one; a pre-step hook, as secateurs' evaluator stops the loop from its own post-step
    hook, which torch runs before the global ones."""

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.n = 0
        register_optimizer_step_pre_hook(self._hook)

    def _hook(self, *args) -> None:
        self.n += 1


def _loss(batch, model):
    import torch.nn.functional as F

    return F.cross_entropy(model(batch[0]), batch[1])


def _level_config(lib: str, ratio: float, extra: dict | None = None) -> list[dict]:
    extra = extra or {}
    if lib == "nni210":
        return [{"op_names": list(WEIGHT_LAYERS), "sparsity_per_layer": ratio, **extra}]
    return [{"op_names": list(WEIGHT_LAYERS), "sparse_ratio": ratio, **extra}]


def _l1_config() -> list[dict]:
    return [{"op_names": list(CHANNEL_LAYERS), "sparse_ratio": L1_RATIO}]


def realised(masks: dict, method: str) -> dict:
    """Pruned fraction of the targeted weights (Level, LT, ADMM) or Conv2d output channels (L1),
    overall and per layer, read from the masks the run returned."""
    per, pruned, total = {}, 0, 0
    channels = method.endswith("-l1")
    for name in (CHANNEL_LAYERS if channels else WEIGHT_LAYERS):
        mask = masks.get(name, {}).get("weight")
        if mask is None:
            per[name] = 0.0
            continue
        gone = (mask.reshape(mask.shape[0], -1) == 0).all(1) if channels else (mask == 0)
        n, z = gone.numel(), int(gone.sum())
        per[name], pruned, total = z / n, pruned + z, total + n
    return {"overall": pruned / max(total, 1), "per_layer": per, "unit": "channels" if channels else "weights"}


def magnitude_agreement(weights: dict, masks: dict, ratio: float) -> float:
    """Of the weights a mask keeps, the fraction that are also among the largest ``1 - ratio`` of
    that layer by |W| (W the unmasked weights the last ADMM round left); 1.0 = magnitude pruning of W."""
    import torch

    agree = kept = 0
    for name, w in weights.items():
        mask = masks[name]["weight"].flatten().bool()
        top = torch.zeros_like(mask)
        top[w.detach().abs().flatten().topk(w.numel() - int(w.numel() * ratio)).indices] = True
        agree, kept = agree + int((mask & top).sum()), kept + int(mask.sum())
    return agree / max(kept, 1)


def _asked(method: str) -> float:
    if method.endswith("-l1"):
        return L1_RATIO
    if method.startswith(("lt-", "reinit-")):
        return float(method.split("-")[1])
    return ADMM_RATIO if method.startswith("admm") else LEVEL_RATIO


def _training_func(stream, default_steps: int, steps_per_epoch: int):
    """The user's loop as both TorchEvaluators call it: (model, optimizers, step/criterion, lr_schedulers,
    max_steps, max_epochs). NNI 2.10 passes a criterion(output, target); NNI 3.0 / secateurs a training_step."""

    def training_func(model, optimizers, step_or_criterion, lr_schedulers=None, max_steps=None, max_epochs=None,
                      *args, criterion_form=False, **kwargs):
        opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        steps = max_steps if max_steps else (max_epochs * steps_per_epoch if max_epochs else default_steps)
        loss_of = (lambda b, m: step_or_criterion(m(b[0]), b[1])) if criterion_form else step_or_criterion
        fm.train_steps(model, opt, loss_of, stream, steps)

    return training_func


# ----------------------------------------------------------------------------- workers


def run_dense(seed: int, quick: bool) -> dict:
    """Per seed: the random init (LotteryTicket's theta_0), a differently seeded init (the control),
    and the dense model pretrained from the init (the starting point of A and C)."""
    import torch
    from safetensors.torch import save_file

    b, p = (QUICK if quick else FULL), _paths(seed, quick)
    torch.set_num_threads(1)
    x, y = fm.load_split(os.path.join(OUT, "data"), "train")
    xt, yt = fm.load_split(os.path.join(OUT, "data"), "test")
    torch.manual_seed(1000 + seed)
    reinit = fm.build_model()
    torch.manual_seed(seed)
    model = fm.build_model()

    def state(m):
        return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}

    save_file(state(model), p["init"])
    save_file(state(reinit), p["reinit"])
    opt = torch.optim.SGD(model.parameters(), lr=b["dense_lr"], momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / b["dense_steps"])
    stream = fm.BatchStream(x, y, b["batch"], seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(b["dense_steps"]):
        opt.zero_grad()
        _loss(stream.next(), model).backward()
        opt.step()
        sched.step()
    info = {"seed": seed, "train_s": time.perf_counter() - t0, "steps": b["dense_steps"],
            "acc": fm.accuracy(model, xt[:b["n_test"]], yt[:b["n_test"]])}
    save_file(state(model), p["dense"])
    with open(p["info"], "w") as f:
        json.dump(info, f)
    return info


def _run_secateurs(method: str, model, stream, b: dict, p: dict, test_2k: tuple):
    import torch

    from secateurs import L1NormPruner, LevelPruner, TorchEvaluator
    from secateurs.masks import attach_masks, load_masks, save_masks

    def evaluator(lr, default_steps, steps_per_epoch=1):
        return TorchEvaluator(_training_func(stream, default_steps, steps_per_epoch),
                              torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), _loss)

    def train(steps, lr):
        fm.train_steps(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), _loss, stream, steps)

    def base(what):
        if what == "level":
            return LevelPruner(model, _level_config("secateurs", LEVEL_RATIO))
        return L1NormPruner(model, _l1_config(), dummy_input=torch.randn(1, 1, 28, 28))

    sched, _, what = method.partition("-")
    if sched in ("agp", "linear"):
        from secateurs import AGPPruner, LinearPruner

        cls = AGPPruner if sched == "agp" else LinearPruner
        pruner = cls(base(what), interval_steps=b["interval"], total_times=b["times"],
                     evaluator=evaluator(b["lr"], b["steps"]), progress=False)
        _, masks = pruner.compress(max_steps=b["steps"])
        return masks, {}
    if sched == "oneshot":
        _, masks = base(what).compress()
        train(b["steps"], b["lr"])
        return masks, {}
    if sched == "lt":
        from secateurs import LotteryTicketPruner

        ratio = float(what)
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        pruner = LotteryTicketPruner(model, _level_config("secateurs", ratio), evaluator(b["lt_lr"], b["lt_steps"]),
                                     total_iteration=b["lt_rounds"], training_steps=b["lt_steps"], reset_weight=True,
                                     rewind_step=0, pruning_algorithm="level")
        _, masks = pruner.compress()
        # The ticket must be the init under the masks: check before training it.
        mods = dict(model.named_modules())
        off = max(float((mods[n].weight - init[f"{n}.weight"] * masks[n]["weight"].float()).abs().max())
                  for n in WEIGHT_LAYERS)
        save_masks(masks, p["masks"](what))
        train(b["lt_steps"], b["lt_lr"])
        return masks, {"ticket_max_abs_diff_from_init_times_mask": off}
    if sched == "reinit":
        masks = load_masks(p["masks"](what))
        attach_masks(model, masks)
        train(b["lt_steps"], b["lt_lr"])
        return masks, {}
    if sched == "dense" and what == "lt":
        train(b["lt_steps"], b["lt_lr"])
        return {}, {}
    if sched == "admm":
        from secateurs import ADMMPruner

        pruner = ADMMPruner(model, _level_config("secateurs", ADMM_RATIO, {"rho": b["rho"]}),
                            evaluator(b["lr"], b["admm_steps"]), iterations=b["admm_iters"],
                            training_steps=b["admm_steps"], granularity="fine-grained")
        _, masks = pruner.compress()
        mods = dict(model.named_modules())
        agreement = magnitude_agreement({n: mods[n].parametrizations.weight.original for n in WEIGHT_LAYERS},
                                        masks, ADMM_RATIO)
        t0 = time.perf_counter()
        before = fm.accuracy(model, *test_2k)
        excluded = time.perf_counter() - t0
        train(b["steps"] - b["admm_iters"] * b["admm_steps"], b["lr"])
        return masks, {"magnitude_agreement": agreement, "acc_before_ft_2k": before, "excluded_s": excluded}
    raise ValueError(f"unknown secateurs method {method!r}")


def _run_nni3(method: str, model, stream, b: dict, p: dict, test_2k: tuple):
    import nni
    import torch
    from nni.compression.pruning import AGPPruner, L1NormPruner, LevelPruner, LinearPruner
    from nni.compression.utils import TorchEvaluator

    sched, _, what = method.partition("-")
    config = _level_config("nni3", LEVEL_RATIO) if what == "level" else _l1_config()
    base = (LevelPruner if what == "level" else L1NormPruner)(model, config)
    ev = TorchEvaluator(_training_func(stream, b["steps"], 1),
                        nni.trace(torch.optim.SGD)(model.parameters(), lr=b["lr"], momentum=0.9), _loss)
    cls = AGPPruner if sched == "agp" else LinearPruner
    _, masks = cls(base, interval_steps=b["interval"], total_times=b["times"], evaluator=ev).compress(
        max_steps=b["steps"], max_epochs=None)
    return masks, {}


def _patch_nni210_torch_load() -> None:
    """NNI 2.10's iterative pruners torch.save whole models to their log folder and torch.load
    them back; torch >= 2.6 refuses that by default (weights_only=True). Its own files only."""
    import torch

    torch.load = functools.partial(torch.load, weights_only=False)


def _patch_nni210_admm_penalty(cls) -> None:
    """The "admm-paper" cell only: NNI 2.10 adds ``rho / 2 * sqrt(||W - Z + U||)`` to the loss, whose
    gradient is infinite where W - Z + U = 0, and Z starts as W, so the first step makes the
    weights NaN. This puts in the paper's penalty, ``rho / 2 * ||W - Z + U||_F ** 2``."""

    def loss_patch(self, origin_loss):
        penalty = 0
        for name, wrapper in self.get_modules_wrapper().items():
            rho = wrapper.config.get("rho", 1e-4)
            penalty += (rho / 2) * (wrapper.weight - self.Z[name]["weight"] + self.U[name]["weight"]).pow(2).sum()
        return origin_loss + penalty

    cls.loss_patch = loss_patch


def _run_nni210(method: str, model, stream, b: dict, p: dict, test_2k: tuple):
    import nni
    import torch
    import torch.nn.functional as F
    from nni.compression.pytorch import TorchEvaluator
    from nni.compression.pytorch.pruning import ADMMPruner, LotteryTicketPruner

    def evaluator(lr, default_steps, steps_per_epoch=1):
        return TorchEvaluator(functools.partial(_training_func(stream, default_steps, steps_per_epoch),
                                                criterion_form=True),
                              nni.trace(torch.optim.SGD)(model.parameters(), lr=lr, momentum=0.9), F.cross_entropy)

    def train(m, steps, lr):
        fm.train_steps(m, torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9), _loss, stream, steps)

    sched, _, what = method.partition("-")
    if sched == "lt":
        _patch_nni210_torch_load()
        ratio = float(what)
        with tempfile.TemporaryDirectory(dir=OUT) as log_dir:
            pruner = LotteryTicketPruner(model, _level_config("nni210", ratio), "level", b["lt_rounds"],
                                         log_dir=log_dir, keep_intermediate_result=False,
                                         evaluator=evaluator(b["lt_lr"], b["lt_steps"]), reset_weight=True)
            pruner.compress()
            _, ticket, masks, _, _ = pruner.get_best_result()
        init = fm_state(p["init"])
        off = max(float((dict(ticket.named_modules())[n].weight - init[f"{n}.weight"]).abs().max())
                  for n in WEIGHT_LAYERS)
        masks = {n: {"weight": t["weight"]} for n, t in masks.items()}
        fm.attach_fixed_masks(ticket, masks)
        train(ticket, b["lt_steps"], b["lt_lr"])
        return masks, {"ticket_max_abs_diff_from_init": off, "model": ticket}
    if sched == "admm":
        if what == "paper":
            _patch_nni210_admm_penalty(ADMMPruner)
        # One "epoch" of the loop = admm_steps optimizer steps (NNI 2.10 counts ADMM training in epochs).
        pruner = ADMMPruner(model, _level_config("nni210", ADMM_RATIO, {"rho": b["rho"]}),
                            evaluator=evaluator(b["lr"], b["admm_steps"], b["admm_steps"]),
                            iterations=b["admm_iters"], training_epochs=1, granularity="fine-grained")
        wrapped, masks = pruner.compress()
        finite = all(bool(t.isfinite().all()) for t in wrapped.parameters())
        mods = dict(wrapped.named_modules())
        agreement = magnitude_agreement({n: mods[n].weight for n in WEIGHT_LAYERS}, masks, ADMM_RATIO)
        t0 = time.perf_counter()
        before = fm.accuracy(wrapped, *test_2k)
        excluded = time.perf_counter() - t0
        train(wrapped, b["steps"] - b["admm_iters"] * b["admm_steps"], b["lr"])  # NNI's wrappers apply the masks
        return masks, {"model": wrapped, "finite_after_admm": finite, "magnitude_agreement": agreement,
                       "acc_before_ft_2k": before, "excluded_s": excluded}
    raise ValueError(f"unknown NNI 2.10 method {method!r}")


def fm_state(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def run_cell(lib: str, method: str, seed: int, quick: bool) -> dict:
    import torch

    b, p = (QUICK if quick else FULL), _paths(seed, quick)
    torch.set_num_threads(1)
    counter = StepCounter()
    x, y = fm.load_split(os.path.join(OUT, "data"), "train")
    xt, yt = fm.load_split(os.path.join(OUT, "data"), "test")
    xt, yt = xt[:b["n_test"]], yt[:b["n_test"]]
    torch.manual_seed(seed)
    model = fm.build_model()
    start = "dense" if method.split("-")[0] in ("agp", "linear", "oneshot", "admm") else (
        "reinit" if method.startswith("reinit") else "init")
    model.load_state_dict(fm_state(p[start]))
    stream = fm.BatchStream(x, y, b["batch"], 20_000 + seed)  # the same batches for every method of a seed
    run = {"secateurs": _run_secateurs, "nni3": _run_nni3, "nni210": _run_nni210}[lib]
    # Warm-up on a throwaway copy: the first forward/backward pages in torch's kernels (about 280 MiB
    # of RSS here), which would otherwise swamp what the methods themselves allocate.
    warm = copy.deepcopy(model)
    fm.train_steps(warm, torch.optim.SGD(warm.parameters(), lr=0.0, momentum=0.9), _loss,
                   fm.BatchStream(x, y, b["batch"], 1), 1)
    fm.accuracy(warm, xt[:250], yt[:250])
    del warm
    counter.n = 0
    rss0, t0, c0 = fm.peak_rss_mib(), time.perf_counter(), time.process_time()
    masks, extra = run(method, model, stream, b, p, (xt[:2000], yt[:2000]))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = fm.peak_rss_mib() - rss0
    # The ADMM cells' look at the accuracy before fine-tuning is not part of the method.
    seconds, cpu = seconds - extra.get("excluded_s", 0.0), cpu - extra.get("excluded_s", 0.0)
    evaluated = extra.pop("model", model)
    acc = fm.accuracy(evaluated, xt, yt)
    out = {"lib": lib, "method": method, "seed": seed, "acc": acc, "seconds": seconds, "cpu_s": cpu,
           "rss_growth_mib": rss, "steps": counter.n, "start": start, **extra}
    if method != "dense-lt":
        out["realised"] = realised({k: {t: m.detach().cpu() for t, m in v.items()} for k, v in masks.items()}, method)
        out["asked"] = _asked(method)
    if lib == "secateurs":
        import secateurs

        out["version"] = secateurs.__version__
    else:
        import nni

        out["version"] = nni.__version__
    return out


# ----------------------------------------------------------------------------- orchestration


def expected_steps(method: str, b: dict) -> int:
    if method.startswith("lt-"):
        return b["lt_rounds"] * b["lt_steps"] + b["lt_steps"]
    if method.startswith(("reinit-", "dense-")):
        return b["lt_steps"]
    return b["steps"]


def _worker(python: str, args: list[str]) -> dict:
    return fm.run_worker(python, os.path.abspath(__file__), args, ROOT)


def _ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values) * scale
    s = (statistics.stdev(values) * scale) if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


METHOD_LABEL = {
    "agp": "AGPPruner", "linear": "LinearPruner", "oneshot": "one-shot + fine-tune", "lt": "LotteryTicket (ticket)",
    "reinit": "random re-init, same masks", "dense": "dense, no pruning", "admm": "ADMMPruner + fine-tune",
}


def _row(results: dict, lib: str, method: str, seeds: list[int], label: str, errors: dict) -> str:
    rs = [results[k] for k in (f"{lib}|{method}|{s}" for s in seeds) if k in results]
    fails = [errors[k] for k in (f"{lib}|{method}|{s}" for s in seeds) if k in errors]
    if not rs:
        why = f"failed: {fails[0].splitlines()[0][:160]}" if fails else "not run"
        return f"| {label} | {LIB_NAMES[lib]} | {why} | | | | | |"
    acc = _ms([100 * r["acc"] for r in rs])
    if len(rs) < len(seeds):
        acc += f" (n={len(rs)})"
    if "realised" in rs[0]:
        real = sorted({f"{r['realised']['overall']:.4f}" for r in rs})
        ok = all(abs(r["realised"]["overall"] - r["asked"]) < 0.005 for r in rs)
        real_s = " / ".join(real) + ("" if ok else f" (asked {rs[0]['asked']})")
    else:
        real_s = "0"
    steps = sorted({r["steps"] for r in rs})
    return (f"| {label} | {LIB_NAMES[lib]} | {acc} | {real_s} | {'/'.join(map(str, steps))} "
            f"| {statistics.fmean(r['seconds'] for r in rs):.1f} | {statistics.fmean(r['cpu_s'] for r in rs):.1f} "
            f"| {statistics.fmean(r['rss_growth_mib'] for r in rs):.1f} |")


HEADER = ("| method | library | test acc % (mean ± std) | realised sparsity | optimizer steps | time s | CPU s "
          "| peak RSS growth MiB |\n|---|---|---|---|---|---|---|---|")


def _accs(results: dict, lib: str, method: str, seeds: list[int]) -> dict[int, float]:
    return {s: 100 * results[f"{lib}|{method}|{s}"]["acc"] for s in seeds if f"{lib}|{method}|{s}" in results}


def _compare(results, seeds, a: tuple[str, str], b: tuple[str, str], claim: str, at_least: bool = False) -> str:
    """One expectation: mean of a against mean of b, and the per-seed differences a - b."""
    xa, xb = _accs(results, *a, seeds), _accs(results, *b, seeds)
    common = [s for s in seeds if s in xa and s in xb]
    if not common:
        return f"- {claim}: **not measured** (a side is missing)."
    diffs = [xa[s] - xb[s] for s in common]
    ma, mb = statistics.fmean(xa[s] for s in common), statistics.fmean(xb[s] for s in common)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    wins = sum(d > 0 for d in diffs)
    if at_least:
        verdict = "held" if ma >= mb else ("held within noise" if ma - mb > -max(sd, 0.1) else "did not hold")
    else:
        verdict = "held" if ma > mb and wins == len(common) else ("held on the mean only" if ma > mb else "did not hold")
    return (f"- {claim}: **{verdict}**: {ma:.2f} % vs {mb:.2f} %; per-seed difference "
            f"{', '.join(f'{d:+.2f}' for d in diffs)} (mean {statistics.fmean(diffs):+.2f} ± {sd:.2f}, "
            f"{wins} of {len(common)} seeds ahead).")


def report(results: dict, errors: dict, dense: dict, seeds: list[int], b: dict, rev: str) -> str:
    import torch
    from bench_foundation import machine

    versions = sorted({f"{'secateurs' if r['lib'] == 'secateurs' else 'nni'} {r['version']}" for r in results.values()})
    dense_acc = _ms([100 * dense[s]["acc"] for s in seeds if s in dense])
    ft = b["steps"] - b["interval"] * b["times"]
    admm_ft = b["steps"] - b["admm_iters"] * b["admm_steps"]
    a_rows = []
    for what, label in (("level", f"Level {LEVEL_RATIO:.0%} of weights"), ("l1", f"L1 {L1_RATIO:.0%} of channels")):
        for sched in ("agp", "linear"):
            for lib in ("secateurs", "nni3"):
                a_rows.append(_row(results, lib, f"{sched}-{what}", seeds, f"{label}: {METHOD_LABEL[sched]}", errors))
        a_rows.append(_row(results, "secateurs", f"oneshot-{what}", seeds, f"{label}: {METHOD_LABEL['oneshot']}",
                           errors))
    b_rows = []
    for r in b["lt_ratios"]:
        for lib, m in (("secateurs", f"lt-{r}"), ("nni210", f"lt-{r}"), ("secateurs", f"reinit-{r}")):
            b_rows.append(_row(results, lib, m, seeds, f"{r:.0%}: {METHOD_LABEL[m.split('-')[0]]}", errors))
    b_rows.append(_row(results, "secateurs", "dense-lt", seeds, f"0%: {METHOD_LABEL['dense']}", errors))
    c_rows = [_row(results, "secateurs", "admm", seeds, f"{ADMM_RATIO:.0%}: {METHOD_LABEL['admm']}", errors),
              _row(results, "nni210", "admm", seeds, f"{ADMM_RATIO:.0%}: {METHOD_LABEL['admm']}", errors),
              _row(results, "nni210", "admm-paper", seeds,
                   f"{ADMM_RATIO:.0%}: {METHOD_LABEL['admm']}, paper's penalty patched in", errors),
              _row(results, "secateurs", "oneshot-level", seeds, f"{LEVEL_RATIO:.0%}: one-shot Level + fine-tune",
                   errors)]
    expectations = [
        _compare(results, seeds, ("secateurs", "agp-level"), ("secateurs", "oneshot-level"),
                 "AGP beats one-shot at 90% (secateurs AGP vs one-shot Level)"),
        _compare(results, seeds, ("nni3", "agp-level"), ("secateurs", "oneshot-level"),
                 "the same with NNI 3.0's AGP"),
        _compare(results, seeds, ("secateurs", "agp-l1"), ("secateurs", "oneshot-l1"),
                 "not asked, for reference: AGP vs one-shot at 75% of channels (L1)"),
    ] + [
        _compare(results, seeds, ("secateurs", f"lt-{r}"), ("secateurs", f"reinit-{r}"),
                 f"the ticket beats random re-initialisation at {r:.0%}") for r in b["lt_ratios"]
    ] + [
        _compare(results, seeds, ("secateurs", f"lt-{r}"), ("nni210", f"lt-{r}"),
                 f"for reference: our ticket vs NNI 2.10's at {r:.0%}", at_least=True) for r in b["lt_ratios"]
    ] + [
        _compare(results, seeds, ("secateurs", "admm"), ("nni210", "admm"),
                 "our ADMM at least matches NNI 2.10's", at_least=True),
        _compare(results, seeds, ("secateurs", "admm"), ("nni210", "admm-paper"),
                 "our ADMM at least matches NNI 2.10's with the paper's penalty patched in", at_least=True),
        _compare(results, seeds, ("secateurs", "admm"), ("secateurs", "oneshot-level"),
                 "for reference: our ADMM vs one-shot Level at 90%", at_least=True),
    ]
    bad = [f"{r['lib']} {r['method']} seed {r['seed']}: {r['realised']['overall']:.4f} (asked {r['asked']})"
           for r in results.values() if "realised" in r and abs(r["realised"]["overall"] - r["asked"]) >= 0.005]
    bad_steps = [f"{r['lib']} {r['method']} seed {r['seed']}: {r['steps']} (expected {expected_steps(r['method'], b)})"
                 for r in results.values() if r["steps"] != expected_steps(r["method"], b)]
    nonfinite = [f"{LIB_NAMES[r['lib']]} {r['method']} seed {r['seed']}" for r in results.values()
                 if r.get("finite_after_admm") is False]
    admm_diag = "; ".join(
        f"{label}: {statistics.fmean(v[0]):.3f} of the kept weights are the layer's largest by |W|, "
        f"test accuracy (first 2,000 images) {statistics.fmean(v[1]):.2f} %"
        for label, v in (
            (f"{LIB_NAMES[lib]} {m}", ([r["magnitude_agreement"] for r in rs], [100 * r["acc_before_ft_2k"] for r in rs]))
            for lib, m in (("secateurs", "admm"), ("nni210", "admm"), ("nni210", "admm-paper"))
            for rs in [[r for r in results.values() if r["lib"] == lib and r["method"] == m]] if rs)) or "not measured"
    tickets = [r.get("ticket_max_abs_diff_from_init_times_mask", r.get("ticket_max_abs_diff_from_init"))
               for r in results.values() if r["method"].startswith("lt-")]
    tickets = [t for t in tickets if t is not None]
    failures = "\n".join(f"- {k.replace('|', ' ')}: `{v.splitlines()[0][:300]}`" for k, v in sorted(errors.items()))
    return f"""## Iterative pruners on Fashion-MNIST

Command: `.venv/bin/python bench/bench_iterative.py --seeds {' '.join(map(str, seeds))}` (run {time.strftime('%Y-%m-%d')}, source revision {rev})
Machine: {machine().replace('2 torch threads', '1 torch thread per cell')}; {', '.join(versions)}.
Peers each in their own venv: NNI 3.0 in `.venv-bench`, NNI 2.10 in `.venv-nni210` (both torch {torch.__version__}); every
cell is one fresh process, and the cells of a seed alternate libraries and methods.

Data: Fashion-MNIST from the Debian package `dataset-fashion-mnist`, a fixed seeded subset of {b['n_train']:,} of the
60,000 training images; test accuracy of the final masked model on {'the full' if b['n_test'] >= 10_000 else 'the first'} {b['n_test']:,} images of the test set.
Model: 2 conv + 2 linear (conv 1->32, 32->64, 3x3, ReLU, max-pool; Linear 3136->64->10; 220k parameters).
Level, LotteryTicket and ADMM prune each of conv1, conv2, fc1 at the ratio (the classifier fc2 is kept); L1 prunes
the output channels of conv1 and conv2 (secateurs with `dummy_input`, dependency-aware). SGD, momentum 0.9,
batch {b['batch']} everywhere; the batches of a seed are the same seeded stream for every method.

Budgets (optimizer steps, counted by a global step hook in each cell and shown per row):
- A and C start from a dense model pretrained once per seed ({b['dense_steps']} steps, lr {b['dense_lr']} decayed
  linearly to 0; {dense_acc} % test accuracy), then every method trains {b['steps']} steps at lr {b['lr']}:
  AGP/Linear prune every {b['interval']} steps for {b['times']} rounds (steps {b['interval']}..{b['interval'] * b['times']})
  and fine-tune {ft} more in the same `compress(max_steps={b['steps']})`; one-shot prunes at step 0 and trains
  {b['steps']} steps with the masks attached; ADMM runs {b['admm_iters']} iterations of {b['admm_steps']} steps
  (rho {b['rho']}) and fine-tunes {admm_ft} steps with the masks attached (NNI 2.10 counts ADMM training in epochs:
  its loop's epoch is {b['admm_steps']} steps).
- B starts from the seed's random init (no pretraining): {b['lt_rounds']} rounds of {b['lt_steps']} steps at lr
  {b['lt_lr']}, pruning 1-(1-P)^(k/{b['lt_rounds']}) after round k and resetting to the init (rewind to step 0);
  the ticket (init x final mask) then trains {b['lt_steps']} steps. The control trains the same masks from a
  differently seeded fresh init for the same {b['lt_steps']} steps; the dense row is the unpruned init trained
  {b['lt_steps']} steps.

Time = wall seconds of pruning + training in the cell (evaluation excluded; CPU seconds beside it, the 2 cores
were shared with other work); memory = growth of the process's peak RSS (`getrusage` ru_maxrss) over that span,
above the peak after imports, data and model were loaded. Realised sparsity = pruned fraction of the targeted
weights (of the channels for L1) in the masks the run returned, one value per distinct result over seeds.

### A. AGP and Linear against one-shot pruning (dense start, {b['steps']} steps each)

{HEADER}
""" + "\n".join(a_rows) + f"""

### B. LotteryTicket (from init; {b['lt_rounds']} x {b['lt_steps']} search steps + {b['lt_steps']} ticket steps)

{HEADER}
""" + "\n".join(b_rows) + f"""

### C. ADMM at {ADMM_RATIO:.0%} (dense start, {b['steps']} steps each)

{HEADER}
""" + "\n".join(c_rows) + """

### Expectations

""" + "\n".join(expectations) + f"""

Checks: realised sparsity off the asked ratio by 0.005 or more: {'; '.join(bad) if bad else 'none'}.
Optimizer steps off the budget: {'; '.join(bad_steps) if bad_steps else 'none'}.
Weights NaN or infinite after ADMM (before fine-tuning): {'; '.join(nonfinite) if nonfinite else 'none'}.
At the end of ADMM (before fine-tuning): {admm_diag}.
Tickets equal init x mask before their training (largest |ticket - init x mask| over the seeds and both
libraries): {max(tickets) if tickets else 'not measured'}.
""" + (f"\nCells that failed (first line of the error):\n{failures}\n" if failures else "") + f"""
Workarounds for the peers, in the peer-run code only: NNI 2.10's LotteryTicketPruner `torch.save`s whole models to
its log folder and `torch.load`s them back, which torch >= 2.6 refuses by default; its worker calls `torch.load`
with `weights_only=False` (its own files, in a temporary folder). NNI 2.10 returns the ticket as bare weights and
masks, so its ticket trains with the masks attached as plain `torch.nn.utils.parametrize` multipliers.
NNI 2.10's ADMM adds `rho / 2 * sqrt(||W - Z + U||)` to the loss; Z starts as a copy of W, so the first
backward meets the infinite slope of sqrt at 0 and the weights become NaN (the check above). The row "paper's
penalty patched in" replaces that one method, in its worker only, with the paper's `rho / 2 * ||W - Z + U||_F ** 2`
(what secateurs uses); everything else is NNI's.

Final masks of ADMM, read from the sources: both take them from the largest trained weights |W| after the
last round (secateurs since revision 38c285e, `project(W)` under its allocation; before that it took the
support of Z = project(W + U), which at rho = {b['rho']} kept the wrong weights: 28% of the kept weights among
the largest |W|, 77.74 % after fine-tuning at revision 721e922). The magnitude line above checks it.
"""


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        if argv[1] == "dense":
            out = run_dense(int(argv[2]), argv[3] == "quick")
        else:
            lib, method, seed, mode = argv[1:5]
            out = run_cell(lib, method, int(seed), mode == "quick")
        print("RESULT " + json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="seed 0, tiny budget, 2k test images, no docs")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--only", nargs="+", default=None, help="run only these lib|method cells (debugging)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="cells at a time (default 1; 2 with --quick, whose timings do not count)")
    args = ap.parse_args(argv)
    args.jobs = args.jobs or (2 if args.quick else 1)
    from bench_foundation import revision, write_section

    seeds = [0] if args.quick else args.seeds
    b, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    rev = revision()
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(os.path.join(OUT, "data", "test_y.npy")):
        fm.write_npy(os.path.join(OUT, "data"), FULL["n_train"])
    results_path = os.path.join(OUT, "results_quick.json" if args.quick else "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    results = {k: v for k, v in results.items() if v.get("revision") == rev and "uncommitted" not in rev}
    t_all = time.perf_counter()
    dense, errors = {}, {}
    for seed in seeds:
        p = _paths(seed, args.quick)
        if not (os.path.exists(p["info"]) and os.path.exists(p["dense"])):
            _worker(PY["secateurs"], ["dense", str(seed), mode])
        with open(p["info"]) as f:
            dense[seed] = json.load(f)
        print(f"dense seed {seed}: acc {dense[seed]['acc']:.4f} ({dense[seed]['train_s']:.0f} s)", flush=True)
    def one(seed: int, lib: str, method: str) -> None:
        key = f"{lib}|{method}|{seed}"
        t0 = time.perf_counter()
        try:
            r = _worker(PY[lib], [lib, method, str(seed), mode])
        except RuntimeError as e:
            errors[key] = str(e)
            print(f"FAILED {key}: {e}", flush=True)
            return
        r["revision"] = rev
        results[key] = r
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        real = f"{r['realised']['overall']:.4f}" if "realised" in r else "-"
        print(f"{key:28s} acc {r['acc']:.4f} sparsity {real} steps {r['steps']} {r['seconds']:6.1f} s "
              f"(cpu {r['cpu_s']:.1f}) rss +{r['rss_growth_mib']:.1f} MiB [{time.perf_counter() - t0:.0f} s wall]",
              flush=True)

    todo = [(seed, lib, method) for seed in seeds for lib, method in cells_of_seed(seed, b)
            if f"{lib}|{method}|{seed}" not in results and (not args.only or f"{lib}|{method}" in args.only)]
    if args.jobs == 1:
        for cell in todo:
            one(*cell)
    else:  # --quick: timings do not count, so two cells at a time; a control after every ticket
        from concurrent.futures import ThreadPoolExecutor

        for phase in ([c for c in todo if not c[2].startswith("reinit")], [c for c in todo if c[2].startswith("reinit")]):
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(lambda c: one(*c), phase))
    print(f"all cells: {time.perf_counter() - t_all:.0f} s", flush=True)
    text = report(results, errors, dense, seeds, b, rev)
    print(text)
    if args.quick or args.no_docs:
        return
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "iterative", text)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main(sys.argv[1:])
