"""Measure a model's latency over thread counts, batch sizes and eager/compiled execution.

Several models given together are timed alternately (one call of each in turn, for every
repeat), so that a machine whose load changes during the run slows them alike and their
ratio stays meaningful even when the absolute times do not.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from ._progress import Progress
from .graph.trace import call_with


def repeat_batch(example: Any, batch_size: int) -> Any:
    """The example with ``batch_size`` rows along dim 0, taken from its own rows in turn.

    Tensors of one or more dimensions are resized; 0-d tensors and non-tensor values are
    kept. Tuples, lists and dicts are walked.

    Example:
        >>> import torch
        >>> batch = repeat_batch({"ids": torch.tensor([[1, 2]]), "flag": False}, 3)
        >>> batch["ids"].tolist(), batch["flag"]
        ([[1, 2], [1, 2], [1, 2]], False)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter of repeat_batch must be an int >= 1; got {batch_size!r}.")
    if isinstance(example, torch.Tensor):
        if example.dim() == 0:
            return example
        if example.shape[0] == 0:
            raise ValueError(f"an example input tensor of shape {tuple(example.shape)} has no rows to repeat.")
        index = torch.arange(batch_size, device=example.device) % example.shape[0]
        return example.index_select(0, index)
    if isinstance(example, Mapping):
        return {k: repeat_batch(v, batch_size) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(repeat_batch(v, batch_size) for v in example)
    return example


def _check_sizes(name: str, values: Sequence[int], low: int) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
        raise ValueError(f"The '{name}' parameter of measure_latency must be a non-empty sequence of ints >= {low}; "
                         f"got {values!r}.")
    return values


def _synchronize(model: nn.Module) -> None:
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cuda":
        torch.cuda.synchronize(param.device)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def measure_latency(model: nn.Module | Mapping[str, nn.Module], example: Any, *, threads: Sequence[int] = (1,),
                    batch_sizes: Sequence[int] = (1,), compiled: Sequence[bool] = (False,), warmup: int = 3,
                    repeats: int = 10, progress: bool | None = None) -> list[dict[str, Any]]:
    """Time forward passes for every combination of thread count, batch size and compilation.

    Each setting sets ``torch.set_num_threads`` (restored afterwards), builds the batch with
    :func:`repeat_batch`, and, when compiled, wraps each model in ``torch.compile`` after
    ``torch._dynamo.reset()`` (so every setting compiles afresh for its own shapes and
    threads) and calls it once to compile before the warm-up. Calls run under
    ``torch.inference_mode``; the models' train/eval modes are not changed.

    Args:
        model: one module, or a mapping of labels to modules that take the same input;
            several are timed alternately (one call of each per repeat).
        example: the input of batch size 1 or more (a tensor, a tuple of positional inputs
            or a dict of keyword arguments).
        threads, batch_sizes, compiled: the settings; rows come in this nesting order.
        warmup: untimed calls per model and setting before timing.
        repeats: timed calls per model and setting.
        progress: a progress line on stderr (None: only on a terminal).

    Returns:
        One row per setting and model: ``model`` (the label, "model" for a single module),
        ``threads``, ``batch_size``, ``compiled``, ``median_ms`` and ``min_ms`` (per batch),
        ``repeats`` and ``error`` (None, or the first line of why ``torch.compile`` or the
        call failed; the times are then None).

    Example:
        >>> import torch, torch.nn as nn
        >>> rows = measure_latency(nn.Linear(4, 2), torch.randn(1, 4), batch_sizes=(1, 8), repeats=2, warmup=0)
        >>> [(r["batch_size"], r["median_ms"] > 0, r["error"]) for r in rows]
        [(1, True, None), (8, True, None)]
    """
    models = dict(model) if isinstance(model, Mapping) else {"model": model}
    if not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise TypeError(f"The 'model' parameter of measure_latency must be a torch.nn.Module or a non-empty mapping "
                        f"of labels to modules; got {type(model).__name__}.")
    threads = _check_sizes("threads", threads, 1)
    batch_sizes = _check_sizes("batch_sizes", batch_sizes, 1)
    compiled = (compiled,) if isinstance(compiled, bool) else tuple(compiled)
    if not compiled or not all(isinstance(c, bool) for c in compiled):
        raise ValueError(f"The 'compiled' parameter of measure_latency must be a non-empty sequence of bools; "
                         f"got {compiled!r}.")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"The '{name}' parameter of measure_latency must be an int >= {low}; got {value!r}.")

    settings = list(itertools.product(threads, batch_sizes, compiled))
    bar = Progress(len(settings), "bench", enabled=progress, noun="setting")
    rows: list[dict[str, Any]] = []
    saved_threads = torch.get_num_threads()
    try:
        for done, (n_threads, batch_size, compile_it) in enumerate(settings):
            bar.update(done, threads=n_threads, batch=batch_size, compiled=str(compile_it).lower())
            torch.set_num_threads(n_threads)
            batch = repeat_batch(example, batch_size)
            times = _time_setting(models, batch, compile_it, warmup, repeats)
            for label, (samples, error) in times.items():
                rows.append({"model": label, "threads": n_threads, "batch_size": batch_size, "compiled": compile_it,
                             "median_ms": statistics.median(samples) if samples else None,
                             "min_ms": min(samples) if samples else None, "repeats": repeats, "error": error})
        bar.update(len(settings))
    finally:
        torch.set_num_threads(saved_threads)
        bar.close()
    return rows


def _time_setting(models: dict[str, nn.Module], batch: Any, compile_it: bool, warmup: int,
                  repeats: int) -> dict[str, tuple[list[float], str | None]]:
    """Per label: the timed samples in ms (empty on an error) and the error, if any."""
    runners: dict[str, Any] = {}
    errors: dict[str, str | None] = {label: None for label in models}
    if compile_it:
        torch._dynamo.reset()
    with torch.inference_mode():
        for label, m in models.items():
            runner = m
            try:
                if compile_it:
                    runner = torch.compile(m)
                    call_with(runner, batch)  # compiles
                for _ in range(warmup):
                    call_with(runner, batch)
                _synchronize(m)
            except Exception as err:  # noqa: BLE001 - a model that cannot run here is a row, not a crash
                errors[label] = _first_line(err)
                continue
            runners[label] = runner
        samples: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(repeats):
            for label, runner in runners.items():
                if errors[label] is not None:
                    continue
                try:
                    start = time.perf_counter()
                    call_with(runner, batch)
                    _synchronize(models[label])
                    samples[label].append((time.perf_counter() - start) * 1000.0)
                except Exception as err:  # noqa: BLE001
                    errors[label] = _first_line(err)
    return {label: ([] if errors[label] else samples[label], errors[label]) for label in models}


__all__ = ["measure_latency", "repeat_batch"]
