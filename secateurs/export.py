"""Export a (pruned) model to ONNX or to a ``torch.export`` program, checked against PyTorch.

Every file is written beside its destination under a hidden name, run and compared with
the PyTorch model there, and only then moved into place: a failed export or check leaves
nothing at the destination.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .graph.trace import call_with, output_leaves
from .latency import repeat_batch
from .speedup.verify import compare_outputs

_EXPORTERS = ("auto", "dynamo", "torchscript")
_CHECK_BATCH = 3  # the second batch size the check runs, when the batch is dynamic
_ONE_FILE_LIMIT = 1_800_000_000  # bytes of weights an ONNX file holds inline (protobuf's limit is 2 GiB)
_TRACE_BATCH = 2  # a batch of 1 would let the tracer treat the batch size as the constant 1


def missing_onnx_packages() -> list[str]:
    """The packages ONNX export and its check need that are not installed."""
    return [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]


def _check_common(owner: str, model: Any, path: Any, tolerance: float) -> Path:
    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' parameter of {owner} must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"The 'path' parameter of {owner} must be a str or a path; got {type(path).__name__}.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"The 'tolerance' parameter of {owner} must be a float >= 0; got {tolerance!r}.")
    path = Path(path)
    if not path.resolve().parent.is_dir():
        raise FileNotFoundError(f"{str(path)!r}: the folder {str(path.resolve().parent)!r} does not exist.")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give a file name.")
    return path


def _split(example: Any) -> tuple[tuple, dict[str, Any]]:
    """Positional and keyword inputs, as ``call_with`` passes them."""
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, tuple):
        return example, {}
    return (example,), {}


def _batch_size(example: Any) -> int:
    """The batch size every input tensor shares in dim 0."""
    sizes = {tuple(t.shape)[0] for t in _tensor_leaves(example) if t.dim() > 0}
    if len(sizes) != 1:
        raise ValueError("dynamic_batch=True needs input tensors that share their batch size in dim 0; "
                         f"these have {sorted(sizes) or 'no'} sizes in dim 0. Pass dynamic_batch=False.")
    return sizes.pop()


def _tensor_leaves(obj: Any) -> list[torch.Tensor]:
    return [v for _, v in output_leaves(obj) if isinstance(v, torch.Tensor)]


def _other_batch(example: Any, size: int) -> Any:
    """An input of batch ``size``: fresh random values for floating tensors (so a mix-up of
    rows shows), the example's rows in turn for the others (token ids stay valid)."""
    generator = torch.Generator().manual_seed(1)

    def make(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.is_floating_point():
            return torch.randn((size, *t.shape[1:]), generator=generator, dtype=t.dtype).to(t.device)
        return repeat_batch(t, size)

    if isinstance(example, Mapping):
        return {k: make(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(make(v) for v in example)
    return make(example)


def _reference(model: nn.Module, example: Any) -> Any:
    with torch.no_grad():
        return call_with(model, example)


def _worst(a: Any, b: Any, what: str) -> tuple[float, float]:
    max_abs, max_rel, where = compare_outputs(a, b)
    if math.isinf(max_abs):
        raise RuntimeError(f"{what} does not match PyTorch's: {where or 'the outputs differ'}.")
    return max_abs, max_rel


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A file name in a hidden sibling folder; its files move to ``path``'s folder on success."""
    folder = path.resolve().parent
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=folder))
    try:
        staged = work / path.name
        yield staged
        for file in sorted(work.iterdir()):  # the file and any external-data file beside it
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warnings; a command's stdout must stay its result."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def _input_names(example: Any) -> list[str]:
    if isinstance(example, Mapping):
        return [k for k, v in example.items() if isinstance(v, torch.Tensor)]
    args = example if isinstance(example, tuple) else (example,)
    if len(args) == 1:
        return ["input"]
    return [f"input_{i}" for i in range(len(args))]


def _dynamic_shapes(example: Any) -> Any:
    def dim(v: Any) -> Any:
        return {0: torch.export.Dim("batch")} if isinstance(v, torch.Tensor) and v.dim() > 0 else None

    if isinstance(example, Mapping):
        return {k: dim(v) for k, v in example.items()}
    args = example if isinstance(example, tuple) else (example,)
    return tuple(dim(v) for v in args)


def _onnx_opset(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _run_onnx(session: Any, example: Any) -> list[torch.Tensor]:
    wanted = [i.name for i in session.get_inputs()]
    if isinstance(example, Mapping) and all(n in example for n in wanted):
        values = [example[n] for n in wanted]
    else:  # by position: the exporters keep the order of the inputs
        values = [v for v in (example.values() if isinstance(example, Mapping) else
                              example if isinstance(example, tuple) else (example,)) if isinstance(v, torch.Tensor)]
    feeds = {n: v.detach().cpu().numpy() for n, v in zip(wanted, values)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _export_one(exporter: str, model: nn.Module, example: Any, trace_example: Any, path: Path, opset: int | None,
                dynamic_batch: bool) -> None:
    args, kwargs = _split(trace_example)
    names = _input_names(example)
    common = {"kwargs": kwargs or None, "opset_version": opset, "input_names": names, "verbose": False}
    if exporter == "dynamo":
        # One self-contained file unless protobuf's 2 GB limit forces the weights out beside it.
        size = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
        torch.onnx.export(model, args, str(path), dynamo=True, external_data=size > _ONE_FILE_LIMIT,
                          dynamic_shapes=_dynamic_shapes(trace_example) if dynamic_batch else None, **common)
    else:
        axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
        torch.onnx.export(model, args, str(path), dynamo=False, dynamic_axes=axes, **common)


def export_onnx(model: nn.Module, example: Any, path: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = True, tolerance: float = 1e-4, exporter: str = "auto") -> dict[str, Any]:
    """Export ``model`` to an ONNX file and check it in ONNX Runtime against PyTorch.

    The exporter is ``torch.onnx.export(dynamo=True)``; with ``exporter="auto"`` a model it
    cannot export is tried with the TorchScript-based one (``dynamo=False``). With
    ``dynamic_batch`` the batch size (dim 0 of every input tensor) is left free: the model
    is traced on a batch of 2 and checked on the example and on a batch of 3. The check
    runs ONNX Runtime's CPU provider and compares every output tensor, as the speedup does:
    the largest ``|onnx - torch|`` over an output, relative to that output's largest
    magnitude, must be at most ``tolerance``. The model is not modified; its train/eval
    mode is the one exported (call ``model.eval()`` first).

    Args:
        model: the module.
        example: its input: a tensor, a tuple of positional inputs or a dict of keyword
            inputs (their names become the ONNX input names; a tensor is "input", a tuple
            "input_0", "input_1", ...).
        path: the ``.onnx`` file to write (replaced if it exists). A model with over 1.8 GB of
            weights gets them in a ``.data`` file beside it (ONNX's 2 GB limit).
        opset: the ONNX opset (None: the exporter's default).
        dynamic_batch: leave the batch size free.
        tolerance: the largest relative difference accepted.
        exporter: "auto", "dynamo" or "torchscript".

    Returns:
        ``{"path", "exporter" ("dynamo" or "torchscript"), "opset", "max_abs_diff",
        "max_rel_diff", "inputs" (the ONNX input names), "batch_sizes_checked"}``.

    Raises:
        RuntimeError: no exporter could export the model, or the file's outputs differ
            from PyTorch's by more than ``tolerance``; nothing is left at ``path``.
    """
    path = _check_common("export_onnx", model, path, tolerance)
    if exporter not in _EXPORTERS:
        raise ValueError(f"The 'exporter' parameter of export_onnx must be one of {list(_EXPORTERS)}; "
                         f"got {exporter!r}.")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ValueError(f"The 'opset' parameter of export_onnx must be an int >= 7 or None; got {opset!r}.")
    missing = missing_onnx_packages()
    if missing:
        raise ImportError(f"export_onnx needs {', '.join(missing)} (pip install {' '.join(missing)}).")
    import onnxruntime

    checks = [example]
    trace_example = example
    if dynamic_batch:
        size = _batch_size(example)
        trace_example = repeat_batch(example, _TRACE_BATCH) if size == 1 else example
        checks.append(_other_batch(example, _CHECK_BATCH if size != _CHECK_BATCH else _CHECK_BATCH + 1))
    references = [_reference(model, x) for x in checks]

    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    with _staged(path) as staged:
        failures = []
        for name in order:
            try:
                with _quiet():
                    _export_one(name, model, example, trace_example, staged, opset, dynamic_batch)
                written = _onnx_opset(staged)
                if opset is not None and written != opset:
                    raise RuntimeError(f"it wrote opset {written}, not the {opset} asked for")
                used = name
                break
            except Exception as err:  # noqa: BLE001 - the next exporter may manage; all failures are reported
                failures.append(f"{name}: {_first_line(err)}")
                for file in staged.parent.iterdir():
                    file.unlink()
        else:
            raise RuntimeError("torch.onnx.export failed (" + "; ".join(failures) + ").")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        max_abs = max_rel = 0.0
        for x, ref in zip(checks, references):
            got = _run_onnx(session, x)
            want = _tensor_leaves(ref)
            if len(got) != len(want):
                raise RuntimeError(f"the ONNX model has {len(got)} outputs; PyTorch's output has {len(want)} tensors.")
            a, r = _worst(got, [w.detach().cpu() for w in want], "the ONNX model's output")
            max_abs, max_rel = max(max_abs, a), max(max_rel, r)
        if max_rel > tolerance:
            raise RuntimeError(f"the ONNX model's output differs from PyTorch's by {max_rel:.3g} (relative; "
                               f"{max_abs:.3g} absolute), more than the tolerance {tolerance:g}.")
        del session
    return {"path": str(path), "exporter": used, "opset": written, "max_abs_diff": max_abs,
            "max_rel_diff": max_rel, "inputs": names, "fallback_reason": "; ".join(failures) or None,
            "batch_sizes_checked": [_batch_size_or_none(x) for x in checks]}


def _batch_size_or_none(example: Any) -> int | None:
    sizes = {t.shape[0] for t in _tensor_leaves(example) if t.dim() > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def export_torch(model: nn.Module, example: Any, path: str | os.PathLike, *, dynamic_batch: bool = True,
                 tolerance: float = 1e-4) -> dict[str, Any]:
    """Export ``model`` with ``torch.export.export`` and save the program (``.pt2``), checked
    by loading it back with ``torch.export.load`` and comparing its outputs with the model's.

    Args:
        model: the module (not modified).
        example: its input: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        path: the ``.pt2`` file to write (replaced if it exists).
        dynamic_batch: leave the batch size (dim 0 of every input tensor) free; traced on a
            batch of 2 and checked on the example and on a batch of 3.
        tolerance: the largest relative difference accepted.

    Returns:
        ``{"path", "exporter": "torch.export", "max_abs_diff", "max_rel_diff", "inputs",
        "batch_sizes_checked"}``.

    Raises:
        RuntimeError: torch.export cannot capture the model (the message has the first line
            of its reason), or the loaded program's outputs differ; nothing is left at ``path``.
    """
    path = _check_common("export_torch", model, path, tolerance)
    checks = [example]
    trace_example = example
    dynamic_shapes = None
    if dynamic_batch:
        size = _batch_size(example)
        trace_example = repeat_batch(example, _TRACE_BATCH) if size == 1 else example
        checks.append(_other_batch(example, _CHECK_BATCH if size != _CHECK_BATCH else _CHECK_BATCH + 1))
        dynamic_shapes = _dynamic_shapes(trace_example)
    references = [_reference(model, x) for x in checks]
    args, kwargs = _split(trace_example)
    with _staged(path) as staged:
        try:
            with _quiet():
                program = torch.export.export(model, args, kwargs or None, dynamic_shapes=dynamic_shapes)
                torch.export.save(program, str(staged))
        except Exception as err:  # noqa: BLE001 - any reason torch.export gives is the user's answer
            raise RuntimeError(f"torch.export cannot export {type(model).__name__}: {_first_line(err)}") from err
        with _quiet():
            loaded = torch.export.load(str(staged)).module()
        max_abs = max_rel = 0.0
        for x, ref in zip(checks, references):
            with torch.no_grad():
                got = call_with(loaded, x)
            a, r = _worst(_tensor_leaves(got), _tensor_leaves(ref), "the exported program's output")
            max_abs, max_rel = max(max_abs, a), max(max_rel, r)
        if max_rel > tolerance:
            raise RuntimeError(f"the exported program's output differs from PyTorch's by {max_rel:.3g} (relative; "
                               f"{max_abs:.3g} absolute), more than the tolerance {tolerance:g}.")
    inputs = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))] if len(args) > 1 else ["input"]
    return {"path": str(path), "exporter": "torch.export", "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "inputs": inputs, "batch_sizes_checked": [_batch_size_or_none(x) for x in checks]}


__all__ = ["export_onnx", "export_torch"]
