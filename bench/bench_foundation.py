"""Mask computation speed and memory on torchvision resnet50: secateurs vs NNI 3.0.

Cases (each run in a fresh process, 2 threads, random-init resnet50, 25.5 M weights):

  level_global  LevelPruner, one global group over every Conv2d and Linear weight, 0.5
  l1_conv       L1NormPruner, per layer over every Conv2d, 0.5
  fpgm_conv     FPGMPruner, per layer over every Conv2d, 0.5

Time is construction + compress() (compress attaches the masks for both libraries).
Memory is the growth of the process's peak RSS across the same span, against the
bytes of the model's parameters.

    .venv-bench/bin/python bench/bench_foundation.py            # writes docs/benchmarks.md
    .venv-bench/bin/python bench/bench_foundation.py --quick    # ours only, no file written
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

CASES = {
    "level_global": ("level", [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "global_group_id": 0}]),
    "l1_conv": ("l1norm", [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
    "fpgm_conv": ("fpgm", [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]),
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(lib: str, case: str) -> dict:
    """Build resnet50, prune it with ``lib``'s pruner for ``case``; timings and realised sparsity."""
    import torch
    import torchvision

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    param_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    name, config_list = CASES[case]
    if lib == "secateurs":
        from secateurs import PRUNERS

        cls = PRUNERS.get(name)
    else:
        import nni.compression.pruning as nni_pruning

        cls = {"level": nni_pruning.LevelPruner, "l1norm": nni_pruning.L1NormPruner, "fpgm": nni_pruning.FPGMPruner}[name]
    rss0 = _peak_rss_mib()
    t0 = time.perf_counter()
    pruner = cls(model, config_list)
    _, masks = pruner.compress()
    seconds = time.perf_counter() - t0
    grown = _peak_rss_mib() - rss0
    zeros = total = 0
    for targets in masks.values():
        w = targets["weight"]
        zeros += int(w.numel() - torch.count_nonzero(w))
        total += w.numel()
    return {"lib": lib, "case": case, "seconds": seconds, "rss_growth_mib": grown, "param_mib": param_mib,
            "weights": total, "sparsity": zeros / total}


def fresh(lib: str, case: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", lib, case], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, 2 torch threads, Python {platform.python_version()}, torch {torch.__version__}"


def revision() -> str:
    """The git revision the benchmark ran on (with "+ uncommitted changes" when dirty)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    # The page the benchmarks write is not source: one section written before another is not a change.
    dirty = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
             if not line.endswith("docs/benchmarks.md")]
    return rev + (" + uncommitted changes" if dirty else "")


def write_section(path: str, key: str, text: str) -> None:
    """Replace the section between ``<!-- key -->`` markers in ``path`` (or append it)."""
    start, end = f"<!-- {key} start -->", f"<!-- {key} end -->"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\nEvery figure here comes from the command shown with it.\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        print(json.dumps(run_case(argv[1], argv[2])))
        return
    libs = ["secateurs"] if "--quick" in argv else ["secateurs", "nni"]
    results = {(lib, case): fresh(lib, case) for case in CASES for lib in libs}
    for (lib, case), r in results.items():
        print(f"{lib:9s} {case:13s} {r['seconds']:9.3f} s  peak RSS +{r['rss_growth_mib']:7.1f} MiB "
              f"({r['rss_growth_mib'] / r['param_mib']:.2f}x params)  sparsity {r['sparsity']:.6f}")
    if "--quick" in argv:
        return
    import nni

    rows = []
    for case in CASES:
        ours, peer = results[("secateurs", case)], results[("nni", case)]
        rows.append(
            f"| {case} | {ours['seconds']:.3f} | {peer['seconds']:.3f} | {peer['seconds'] / ours['seconds']:.1f}x "
            f"| {ours['rss_growth_mib'] / ours['param_mib']:.2f}x | {peer['rss_growth_mib'] / peer['param_mib']:.2f}x "
            f"| {ours['sparsity']:.4f} / {peer['sparsity']:.4f} |"
        )
    text = f"""## Mask computation on resnet50 (foundation)

Command: `.venv-bench/bin/python bench/bench_foundation.py` (run {time.strftime('%Y-%m-%d')}, source revision {revision()})
Machine: {machine()}; NNI {nni.__version__}.
Model: torchvision resnet50, random init; parameters {ours['param_mib']:.1f} MiB; targeted weights:
{results[("secateurs", "level_global")]['weights']:,} (every Conv2d and Linear) for `level_global`,
{results[("secateurs", "l1_conv")]['weights']:,} (every Conv2d) for the others.
Each cell is one fresh process; time = construction + `compress()`.
Memory = growth of peak RSS over that span, as a multiple of the parameter bytes.

| case | secateurs s | NNI 3.0 s | speed-up | secateurs memory | NNI memory | realised sparsity (ours / NNI) |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

Cases: `level_global` = LevelPruner, one global group over every Conv2d and Linear weight at 0.5;
`l1_conv` / `fpgm_conv` = L1NormPruner / FPGMPruner per layer over every Conv2d at 0.5.
"""
    write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "foundation", text)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main(sys.argv[1:])
