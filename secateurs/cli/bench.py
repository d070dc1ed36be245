"""``secateurs bench``: latency of a model, or of a dense model and its pruned run folder
timed alternately, next to the ratio of their MACs and parameters."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch.nn as nn

from ._common import (EPILOG_FORMATTER, add_model_arguments, add_output_options, emit, model_from_args,
                      progress_flag, stage, table)
from ._load import UsageError, load_model

_EPILOG = """examples:
  secateurs bench torchvision:resnet18 --pruned run --threads 1,4 --batch-sizes 1,32
  secateurs bench torchvision:resnet18 --pruned run --compile --markdown latency.md
  secateurs bench hf:./bert --input-shape 1,128 --json

With --pruned, the two models are timed alternately (one call of each in turn), so their
ratio holds even on a machine whose load changes; compare ratios, not absolute times.
--compile times torch.compile'd models as well as eager ones.
"""

# A compiled speedup more than this factor short of the MACs ratio gets a note.
_SHORTFALL = 1.1
_ALIGN = 8


def _int_list(text: str, option: str, low: int) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a comma-separated list of integers such as 1,4.") from None
    if not values or any(v < low for v in values):
        raise UsageError(f"{option} {text!r}: every value must be an integer >= {low}.")
    return tuple(dict.fromkeys(values))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _unaligned(dense: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Pruned Conv/Linear layers whose output channels are not a multiple of 8."""
    before = dict(dense.named_modules())
    rows = []
    for name, m in pruned.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            size, was = m.out_channels, getattr(before.get(name), "out_channels", None)
        elif isinstance(m, nn.Linear):
            size, was = m.out_features, getattr(before.get(name), "out_features", None)
        else:
            continue
        if size != was and size % _ALIGN:
            rows.append({"name": name, "type": type(m).__name__, "channels": size, "dense_channels": was})
    return rows


def _setting(row: dict[str, Any]) -> str:
    threads = f"{row['threads']} thread{'s' if row['threads'] != 1 else ''}"
    return f"{'compiled' if row['compiled'] else 'eager'}, {threads}, batch {row['batch_size']}"


def _bench(args: argparse.Namespace) -> int:
    from .. import count_flops_params
    from ..latency import measure_latency, repeat_batch

    threads = _int_list(args.threads, "--threads", 1)
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes", 1)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be 1 or more; got {args.repeats}.")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more; got {args.warmup}.")
    if args.pruned is not None and not Path(args.pruned).is_dir():
        raise UsageError(f"--pruned {args.pruned!r} is not a folder (a run folder written by `secateurs prune`).")
    if args.markdown is not None:
        parent = Path(args.markdown).resolve().parent
        if Path(args.markdown).is_dir() or not parent.is_dir():
            raise UsageError(f"--markdown {args.markdown!r}: not a file in an existing folder.")

    dense = model_from_args(args)
    models = {"dense": dense.model}
    pruned = None
    if args.pruned is not None:
        stage(args, f"loading {args.pruned}")
        pruned = load_model(args.pruned, None, args.input_shape, args.input_factory)
        if pruned.folder is None:
            raise UsageError(f"--pruned {args.pruned!r} is not a run folder (no secateurs.json).")
        models["pruned"] = pruned.model
    example = dense.example
    one = repeat_batch(example, 1)
    counts = {label: count_flops_params(m, one)[:2] for label, m in models.items()}
    compiled = (False, True) if args.compile else (False,)
    n_settings = len(threads) * len(batch_sizes) * len(compiled)
    stage(args, f"timing {n_settings} setting{'s' if n_settings != 1 else ''}, {args.repeats} repeats each"
                + (", dense and pruned in turn" if pruned else ""))
    measured = measure_latency(models, example, threads=threads, batch_sizes=batch_sizes, compiled=compiled,
                               warmup=args.warmup, repeats=args.repeats, progress=progress_flag(args))

    by_setting: dict[tuple, dict[str, dict]] = {}
    for r in measured:
        by_setting.setdefault((r["threads"], r["batch_size"], r["compiled"]), {})[r["model"]] = r
    macs_ratio = _ratio(counts["dense"][0], counts["pruned"][0]) if pruned else None
    params_ratio = _ratio(counts["dense"][1], counts["pruned"][1]) if pruned else None
    rows, notes = [], []
    for (n_threads, batch_size, is_compiled), got in by_setting.items():
        row: dict[str, Any] = {"threads": n_threads, "batch_size": batch_size, "compiled": is_compiled}
        if pruned is None:
            row.update(median_ms=got["dense"]["median_ms"], min_ms=got["dense"]["min_ms"], error=got["dense"]["error"])
        else:
            d, p = got["dense"], got["pruned"]
            errors = [f"{label}: {r['error']}" for label, r in (("dense", d), ("pruned", p)) if r["error"]]
            row.update(dense_ms=d["median_ms"], dense_min_ms=d["min_ms"], pruned_ms=p["median_ms"],
                       pruned_min_ms=p["min_ms"], latency_ratio=_ratio(d["median_ms"], p["median_ms"]),
                       macs_ratio=macs_ratio, params_ratio=params_ratio, error="; ".join(errors) or None)
        if row["error"]:
            notes.append(f"{_setting(row)}: {row['error']}")
        rows.append(row)

    unaligned: list[dict[str, Any]] = []
    if pruned is not None and macs_ratio:
        short = [r for r in rows if r["compiled"] and r["latency_ratio"] is not None
                 and r["latency_ratio"] * _SHORTFALL < macs_ratio]
        if short:
            unaligned = _unaligned(dense.model, pruned.model)
            for r in short:
                notes.append(f"{_setting(r)}: the latency ratio {r['latency_ratio']:.2f}x is more than "
                             f"{_SHORTFALL}x short of the MACs ratio {macs_ratio:.2f}x.")
            if unaligned:
                listed = ", ".join(f"{u['name']} ({u['channels']})" for u in unaligned[:12])
                more = f" and {len(unaligned) - 12} more" if len(unaligned) > 12 else ""
                notes.append(f"{len(unaligned)} pruned layers have channel counts that are not multiples of "
                             f"{_ALIGN}: {listed}{more}. Compiled kernels are fastest on multiples of {_ALIGN}: "
                             f"prune to multiples of {_ALIGN} (AMCPruner's round_to={_ALIGN}, or sparse ratios "
                             f"that leave multiples of {_ALIGN}).")
            else:
                notes.append(f"every pruned Conv/Linear layer keeps a multiple of {_ALIGN} channels, so channel "
                             "alignment is not the cause.")

    if args.markdown is not None:
        Path(args.markdown).write_text(_markdown(args, rows, counts, pruned is not None), encoding="utf-8")

    text = _text(args, rows, counts, pruned is not None, notes)
    emit(args, text, {
        "model": args.model, "pruned": args.pruned,
        "macs": {label: c[0] for label, c in counts.items()}, "params": {label: c[1] for label, c in counts.items()},
        "macs_ratio": macs_ratio, "params_ratio": params_ratio,
        "settings": {"threads": list(threads), "batch_sizes": list(batch_sizes), "compiled": list(compiled),
                     "warmup": args.warmup, "repeats": args.repeats},
        "rows": rows, "notes": notes, "unaligned_layers": unaligned,
        "markdown": args.markdown,
    })
    return 0


def _cells(rows: list[dict[str, Any]], paired: bool) -> tuple[list[str], list[list[str]]]:
    if paired:
        header = ["threads", "batch", "mode", "dense ms", "pruned ms", "latency ratio", "MACs ratio", "params ratio"]
        cells = [[str(r["threads"]), str(r["batch_size"]), "compiled" if r["compiled"] else "eager",
                  _fmt(r["dense_ms"]), _fmt(r["pruned_ms"]), _fmt(r["latency_ratio"], "x"),
                  _fmt(r["macs_ratio"], "x"), _fmt(r["params_ratio"], "x")] for r in rows]
    else:
        header = ["threads", "batch", "mode", "median ms", "min ms"]
        cells = [[str(r["threads"]), str(r["batch_size"]), "compiled" if r["compiled"] else "eager",
                  _fmt(r["median_ms"]), _fmt(r["min_ms"])] for r in rows]
    return header, cells


def _summary(args: argparse.Namespace, counts: dict[str, tuple[int, int]]) -> list[str]:
    names = {"dense": args.model, "pruned": args.pruned}
    shown = {"dense": "dense" if len(counts) > 1 else "model", "pruned": "pruned"}
    return [f"{shown[label]}: {names[label]}, {_count(macs)} MACs, {_count(params)} parameters (batch 1)"
            for label, (macs, params) in counts.items()]


def _text(args: argparse.Namespace, rows, counts, paired: bool, notes: list[str]) -> str:
    header, cells = _cells(rows, paired)
    lines = _summary(args, counts) + [table(header, cells, right=tuple(range(3, len(header))))]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _markdown(args: argparse.Namespace, rows, counts, paired: bool) -> str:
    header, cells = _cells(rows, paired)
    lines = [f"- {s}" for s in _summary(args, counts)]
    calls = f"{args.warmup} warm-up call{'s' if args.warmup != 1 else ''}"
    lines += [f"- {args.repeats} timed calls per model and setting after {calls}; "
              "milliseconds per batch are medians" + ("; the models were timed alternately" if paired else ""), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="time a model, or a dense model against its pruned run folder",
                            description="Time MODEL's forward pass over thread counts and batch sizes; with --pruned, "
                                        "time the pruned run folder alternately with it and compare the latency "
                                        "ratio with the MACs and parameter ratios.",
                            formatter_class=EPILOG_FORMATTER, epilog=_EPILOG)
    add_model_arguments(parser)
    parser.add_argument("--pruned", metavar="DIR", help="a run folder written by `secateurs prune` to time against MODEL")
    parser.add_argument("--threads", default="1", metavar="N,N", help="thread counts (default 1)")
    parser.add_argument("--batch-sizes", default="1", metavar="N,N", dest="batch_sizes",
                        help="batch sizes, built by repeating the example input (default 1)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models as well as eager ones")
    parser.add_argument("--repeats", type=int, default=10, metavar="N",
                        help="timed calls per model and setting (default 10)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N",
                        help="untimed calls per model and setting first (default 3)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown to FILE (replaced)")
    add_output_options(parser)
    parser.set_defaults(func=_bench)
