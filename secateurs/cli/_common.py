"""Options and output shared by the subcommands: --quiet, --json, the model arguments,
progress on stderr, and output folders that appear whole or not at all."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ._load import LoadedModel, UsageError, load_model

EPILOG_FORMATTER = argparse.RawDescriptionHelpFormatter


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print no progress (stderr) and no tables")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def add_model_arguments(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        parser.add_argument("model", metavar="MODEL",
                            help="torchvision:NAME, timm:NAME, hf:PATH, file.py:factory, package.module:factory, "
                                 "or a folder written by `secateurs prune` / `secateurs speedup`")
    parser.add_argument("--weights", metavar="FILE",
                        help="weights to load: safetensors, or a state dict (read with weights_only=True)")
    parser.add_argument("--input-shape", metavar="SHAPE",
                        help="example input shape, such as 1,3,224,224 (default: the model's known one)")
    parser.add_argument("--input", metavar="module:function", dest="input_factory",
                        help="a function returning the example input (a tensor, tuple or dict)")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch.manual_seed before the model is built (default 0): random weights repeat")


def model_from_args(args: argparse.Namespace, spec: str | None = None) -> LoadedModel:
    stage(args, f"loading {spec or args.model}")
    torch.manual_seed(args.seed)
    return load_model(spec or args.model, args.weights, args.input_shape, args.input_factory)


def stage(args: argparse.Namespace, message: str) -> None:
    """One progress line on stderr (not with --quiet)."""
    if not getattr(args, "quiet", False):
        print(f"[secateurs] {message}", file=sys.stderr, flush=True)


def progress_flag(args: argparse.Namespace) -> bool | None:
    """The ``progress=`` a long-running pruner gets: off with --quiet, else on a terminal."""
    return False if getattr(args, "quiet", False) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(data: Any) -> str:
    return json.dumps(_jsonable(data), indent=2, sort_keys=False)


def emit(args: argparse.Namespace, text: str, data: Any) -> None:
    """The command's result: ``data`` as JSON with --json, else ``text`` (nothing with --quiet)."""
    if getattr(args, "json", False):
        print(dumps(data))
    elif not getattr(args, "quiet", False) and text:
        print(text)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain-text table with aligned columns; columns in ``right`` are right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def check_new_folder(path: str | None, option: str = "--out") -> Path | None:
    """An output folder must not exist yet or be empty (nothing of an earlier run is mixed in)."""
    if path is None:
        return None
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{option} {path!r} exists and is not an empty folder; choose a new one.")
    if not folder.resolve().parent.is_dir():
        raise UsageError(f"{option} {path!r}: the parent folder {str(folder.resolve().parent)!r} does not exist.")
    return folder


@contextlib.contextmanager
def new_folder(folder: Path) -> Iterator[Path]:
    """Write into a hidden sibling, then move it to ``folder`` in one step: on any failure
    nothing is left at ``folder``."""
    folder = folder.resolve()
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield work
        if folder.exists():
            folder.rmdir()  # empty, as check_new_folder made sure
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
