"""``secateurs export``: write a model as ONNX and/or a ``torch.export`` program, checked
against PyTorch before any file appears."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ._common import EPILOG_FORMATTER, add_model_arguments, add_output_options, emit, model_from_args, stage
from ._load import CommandFailed, UsageError

_EPILOG = """examples:
  secateurs export run --onnx run/model.onnx
  secateurs export torchvision:resnet18 --input-shape 1,3,224,224 --onnx r18.onnx --torch-export r18.pt2
  secateurs export hf:./bert --onnx bert.onnx --opset 18 --json

The file is run on the example input (and, unless --no-dynamic-batch, on a batch of 3)
and compared with PyTorch's output; a failed export or check leaves no file.
"""


def _check_output(path: str | None, option: str) -> Path | None:
    if path is None:
        return None
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{option} {path!r} is a folder; give a file name.")
    parent = file.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path!r}: the folder {str(parent)!r} does not exist.")
    return file


def _line(kind: str, result: dict[str, Any]) -> str:
    how = f"{result['exporter']} exporter" if kind == "ONNX" else result["exporter"]
    how += f", opset {result['opset']}" if result.get("opset") else ""
    if result.get("fallback_reason"):
        how += f"; the dynamo exporter failed: {result['fallback_reason'].removeprefix('dynamo: ')}"
    sizes = ", ".join(str(b) for b in result["batch_sizes_checked"] if b is not None) or "the example"
    return (f"exported {kind} {result['path']} ({how}; inputs {', '.join(result['inputs'])}): at batch sizes {sizes} "
            f"the largest difference from PyTorch is {result['max_abs_diff']:.2g} absolute, "
            f"{result['max_rel_diff']:.2g} relative")


def _export(args: argparse.Namespace) -> int:
    from ..export import export_onnx, export_torch, missing_onnx_packages

    if not args.onnx and not args.torch_export:
        raise UsageError("nothing to write: give --onnx FILE and/or --torch-export FILE.")
    targets = {"onnx": _check_output(args.onnx, "--onnx"),
               "torch_export": _check_output(args.torch_export, "--torch-export")}
    if targets["onnx"] and targets["torch_export"] and \
            targets["onnx"].resolve() == targets["torch_export"].resolve():
        raise UsageError("--onnx and --torch-export name the same file.")
    missing = missing_onnx_packages() if args.onnx else []
    if missing:
        raise UsageError(f"--onnx needs {', '.join(missing)} (pip install {' '.join(missing)}).")
    if not args.tolerance >= 0:
        raise UsageError(f"--tolerance must be >= 0; got {args.tolerance}.")
    if args.opset is not None and args.opset < 7:
        raise UsageError(f"--opset must be 7 or more; got {args.opset}.")
    loaded = model_from_args(args)

    # Each file is written in a hidden folder beside its destination; all move into place
    # only when every export asked for has passed its check.
    staging: dict[str, Path] = {}
    results: dict[str, Any] = {"onnx": None, "torch_export": None}
    try:
        for kind, target in targets.items():
            if target is None:
                continue
            staging[kind] = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.resolve().parent))
            staged = staging[kind] / target.name
            try:
                if kind == "onnx":
                    stage(args, f"exporting to ONNX and checking it in ONNX Runtime: {target}")
                    result = export_onnx(loaded.model, loaded.example, staged, opset=args.opset,
                                         dynamic_batch=args.dynamic_batch, tolerance=args.tolerance,
                                         exporter=args.exporter)
                else:
                    stage(args, f"exporting with torch.export and checking the loaded program: {target}")
                    result = export_torch(loaded.model, loaded.example, staged, dynamic_batch=args.dynamic_batch,
                                          tolerance=args.tolerance)
            except RuntimeError as err:
                raise CommandFailed(str(err).splitlines()[0]) from None
            results[kind] = dict(result, path=str(target))
        for kind, folder in staging.items():
            for file in sorted(folder.iterdir()):  # the file and an ONNX external-data file beside it
                os.replace(file, targets[kind].resolve().parent / file.name)
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)

    text = "\n".join(_line("ONNX" if kind == "onnx" else "torch.export program", r)
                     for kind, r in results.items() if r is not None)
    emit(args, text, {"model": args.model, "state": loaded.state, **results})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="write a model as ONNX and/or a torch.export program, checked against "
                                           "PyTorch",
                            description="Export MODEL (typically a run folder) to ONNX and/or torch.export's .pt2, "
                                        "run the file and compare its outputs with PyTorch's.",
                            formatter_class=EPILOG_FORMATTER, epilog=_EPILOG)
    add_model_arguments(parser)
    parser.add_argument("--onnx", metavar="FILE", help="write an ONNX file (replaced if it exists)")
    parser.add_argument("--torch-export", metavar="FILE", dest="torch_export",
                        help="write a torch.export program (.pt2, load with torch.export.load)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                        help="ONNX exporter: torch.onnx's dynamo one, the TorchScript one, or auto "
                             "(dynamo, then TorchScript if it fails; default)")
    parser.add_argument("--no-dynamic-batch", action="store_false", dest="dynamic_batch",
                        help="fix the batch size to the example's (default: dim 0 of every input is free)")
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="largest relative difference from PyTorch accepted (default 1e-4)")
    add_output_options(parser)
    parser.set_defaults(func=_export)
