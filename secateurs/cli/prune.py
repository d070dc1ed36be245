"""``secateurs prune``, ``secateurs report``, ``secateurs speedup`` and ``secateurs flops``."""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._registry import PRUNERS
from ._common import (EPILOG_FORMATTER, add_model_arguments, add_output_options, check_new_folder, dumps, emit,
                      model_from_args, new_folder, progress_flag, stage, table)
from ._load import (MANIFEST, MANIFEST_FORMAT, MASKS_FILE, MODEL_FILE, CommandFailed, LoadedModel, UsageError,
                    load_callable, read_config_file, read_manifest)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


# -- prune ------------------------------------------------------------------------------


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--param {item!r} is not NAME=VALUE (such as training_steps=100).")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text  # a plain word: pruning_algorithm=l1norm
    return params


def _names(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _score(evaluate, model: nn.Module, what: str) -> float:
    value = evaluate(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"--evaluate returned {value!r} for the {what} model; it must return a finite number.")
    return float(value)


def _config_list(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    if (args.config is None) == (args.sparse_ratio is None):
        raise UsageError("give either --config FILE or --sparse-ratio R.")
    if args.config is not None:
        if args.op_types or args.op_names:
            raise UsageError("--op-types / --op-names go with --sparse-ratio; with --config, put them in the file.")
        return read_config_file(args.config)
    return None


def _write_manifest(work: Path, loaded: LoadedModel, state: str, extra: dict[str, Any]) -> None:
    manifest = {"format": MANIFEST_FORMAT, "source": loaded.source, "state": state, **extra}
    (work / MANIFEST).write_text(dumps(manifest) + "\n", encoding="utf-8")


def _save_model(work: Path, model: nn.Module, state: str) -> None:
    from ..masks import detach_masks, get_masks
    from ..speedup import save_pruned_model

    if state == "sped-up":
        save_pruned_model(model, work / MODEL_FILE)
        return
    from safetensors.torch import save_model

    plain = copy.deepcopy(model)
    if get_masks(plain):
        detach_masks(plain, apply=True)  # full-size tensors with the pruned entries zero
    save_model(plain, str(work / MODEL_FILE))


def _prune(args: argparse.Namespace) -> int:
    from ..masks import save_masks
    from ..oneshot import prune

    try:
        cls = PRUNERS.get(args.pruner)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    takes_evaluator = "evaluator" in inspect.signature(cls.__init__).parameters
    if args.train and not takes_evaluator:
        raise UsageError(f"{cls.__name__} is one-shot: it takes no --train (--evaluate only scores the result).")
    config_list = _config_list(args)
    out = check_new_folder(args.out)
    params = _parse_params(args.param)
    train = load_callable(args.train, "--train") if args.train else None
    evaluate = load_callable(args.evaluate, "--evaluate") if args.evaluate else None
    loaded = model_from_args(args)
    if loaded.state != "dense":
        raise UsageError(f"{args.model!r} is already pruned ({loaded.state}); prune its original model.")
    model = loaded.model
    score_before = _score(evaluate, model, "dense") if evaluate else None
    evaluator = train(model) if train else (evaluate if takes_evaluator else None)
    compress_args = {k: v for k, v in (("max_steps", args.max_steps), ("max_epochs", args.max_epochs)) if v}
    stage(args, f"pruning with {args.pruner}")
    try:
        model, report = prune(model, args.pruner, config_list, sparse_ratio=args.sparse_ratio,
                              op_types=_names(args.op_types), op_names=_names(args.op_names),
                              dummy_input=loaded.example, evaluator=evaluator, speedup=False,
                              progress=progress_flag(args), compress_args=compress_args, **params)
    except ValueError as err:
        where = f"{args.config}: " if args.config else ""
        raise UsageError(where + str(err)) from None
    masks = report.masks
    if args.speedup:
        stage(args, "speeding up")
        from ..masks import get_masks
        from ..speedup import ModelSpeedup

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report lists what the speedup kept
            engine = ModelSpeedup(model, loaded.example, masks=get_masks(model))
            try:
                engine.speedup_model()
            except RuntimeError as err:
                raise CommandFailed(str(err).splitlines()[0]) from None
        report.sped_up = True
        report.max_abs_diff, report.max_rel_diff = engine.report.max_abs_diff, engine.report.max_rel_diff
    if evaluate:
        report.score_before, report.score_after = score_before, _score(evaluate, model, "pruned")
    if out is not None:
        stage(args, f"writing {out}")
        state = "sped-up" if args.speedup else "masked"
        with new_folder(out) as work:
            save_masks(masks, work / MASKS_FILE)
            _save_model(work, model, state)
            (work / REPORT_JSON).write_text(dumps(report.to_dict()) + "\n", encoding="utf-8")
            (work / REPORT_MD).write_text(report.to_markdown(), encoding="utf-8")
            plots = []
            try:
                plots = [p.name for p in report.plot(work)]
            except ImportError as err:
                stage(args, f"no plots: {err}")
            _write_manifest(work, loaded, state, {"pruner": report.pruner, "config_list": report.config_list,
                                                  "files": [MODEL_FILE, MASKS_FILE, REPORT_JSON, REPORT_MD, *plots]})
    data = report.to_dict() | ({"out": str(out)} if out else {})
    text = str(report) + (f"\n\nwritten to {out}/" if out else "")
    emit(args, text, data)
    return 0


# -- report -----------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    from ..oneshot import PruneReport

    path = Path(args.path)
    if path.is_dir():
        read_manifest(path)
        file = path / REPORT_JSON
        if not file.is_file():
            raise UsageError(f"{str(path)!r} has no {REPORT_JSON} (it was not written by `secateurs prune`).")
        try:
            report = PruneReport.from_dict(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
            raise UsageError(f"{str(file)!r} is not a readable report: {err}") from None
        config = "\n".join(f"[{i}] {json.dumps(c)}" for i, c in enumerate(report.config_list))
        notes = "".join(f"\nspeedup kept: {n}" for n in report.speedup_notes)
        emit(args, f"{report}\n\nconfig list:\n{config}{notes}", report.to_dict())
        return 0
    if path.is_file():
        from ..masks import load_masks
        from .basic import masks_rows

        rows = masks_rows(load_masks(path))
        emit(args, table(("module", "target", "shape", "pruned"),
                         [(r["module"], r["target"], "x".join(map(str, r["shape"])), f"{r['sparsity']:.2%}")
                          for r in rows], right=(3,)), rows)
        return 0
    raise UsageError(f"{args.path!r}: no such folder or masks file.")


# -- speedup ----------------------------------------------------------------------------


def _speedup(args: argparse.Namespace) -> int:
    from ..analysis import count_flops_params
    from ..masks import load_masks, save_masks
    from ..speedup import ModelSpeedup

    out = check_new_folder(args.out)
    if args.masks is not None and not Path(args.masks).is_file():
        raise UsageError(f"--masks {args.masks!r}: no such file.")
    loaded = model_from_args(args)
    if loaded.state == "sped-up":
        raise UsageError(f"{args.model!r} is already sped up.")
    masks = load_masks(args.masks) if args.masks else loaded.masks
    if masks is None:
        raise UsageError("give --masks FILE (a file written by save_masks or `secateurs prune`).")
    model = loaded.model
    macs_before, params_before, _ = count_flops_params(model, loaded.example)
    stage(args, "speeding up")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = ModelSpeedup(model, loaded.example, masks=masks, tolerance=args.tolerance)
        try:
            engine.speedup_model()
        except RuntimeError as err:
            raise CommandFailed(str(err).splitlines()[0]) from None
    macs_after, params_after, _ = count_flops_params(model, loaded.example)
    rep = engine.report
    data = {"params_before": params_before, "params_after": params_after, "macs_before": macs_before,
            "macs_after": macs_after, "max_abs_diff": rep.max_abs_diff, "max_rel_diff": rep.max_rel_diff,
            "removed": rep.removed, "kept": rep.kept, "not_shrunk": rep.not_shrunk, "config": rep.config}
    if out is not None:
        stage(args, f"writing {out}")
        with new_folder(out) as work:
            save_masks(masks, work / MASKS_FILE)
            _save_model(work, model, "sped-up")
            (work / "speedup.json").write_text(dumps(data) + "\n", encoding="utf-8")
            _write_manifest(work, loaded, "sped-up", {"files": [MODEL_FILE, MASKS_FILE, "speedup.json"]})
    text = (f"parameters {params_before:,} -> {params_after:,} ({params_after / max(params_before, 1):.1%}); "
            f"MACs {macs_before:,} -> {macs_after:,} ({macs_after / max(macs_before, 1):.1%})\n"
            f"largest output difference from the masked model: {rep.max_abs_diff:.3g} absolute, "
            f"{rep.max_rel_diff:.3g} relative")
    text += "".join(f"\nkept: {line}" for line in rep.kept + rep.not_shrunk)
    text += f"\n\nwritten to {out}/" if out else ""
    emit(args, text, data | ({"out": str(out)} if out else {}))
    return 0


# -- flops ------------------------------------------------------------------------------


def _flops(args: argparse.Namespace) -> int:
    from ..analysis import count_flops_params

    loaded = model_from_args(args)
    macs, params, rows = count_flops_params(loaded.model, loaded.example)
    shape = lambda s: "x".join(map(str, s)) if s else "-"  # noqa: E731
    body = table(("layer", "type", "input", "output", "MACs", "params"),
                 [(r["name"], r["type"], shape(r["input_shape"]), shape(r["output_shape"]), f"{r['flops']:,}",
                   f"{r['params']:,}") for r in rows], right=(4, 5))
    text = f"{body}\n\ntotal: {macs:,} MACs, {params:,} parameters"
    emit(args, text, {"macs": macs, "params": params,
                      "layers": [r | {"input_shape": list(r["input_shape"] or []),
                                      "output_shape": list(r["output_shape"] or [])} for r in rows]})
    return 0


# -- registration -----------------------------------------------------------------------

_PRUNE_EPILOG = """examples:
  secateurs prune torchvision:resnet18 --pruner l1norm --sparse-ratio 0.5 --op-types Conv2d \\
      --input-shape 1,3,64,64 --speedup --out run
  secateurs prune model.py:make --pruner taylorfo --config config.yaml --train train.py:evaluator \\
      --param training_steps=20 --out run2

--train module:function   function(model) -> a secateurs Evaluator (TorchEvaluator, ...) that
                          trains this model; needed by data-driven and iterative pruners.
--evaluate module:function  function(model) -> float, higher is better; scored before and after
                          pruning, and the score of the search pruners when --train is not given.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model; write masks, the pruned model, a report and plots",
                       formatter_class=EPILOG_FORMATTER, epilog=_PRUNE_EPILOG)
    add_model_arguments(p)
    p.add_argument("--pruner", required=True, metavar="NAME", help="a pruner of `secateurs list`")
    p.add_argument("--config", metavar="FILE", help="config_list in YAML or JSON (NNI's schema)")
    p.add_argument("--sparse-ratio", type=float, metavar="R", help="one config: prune this fraction")
    p.add_argument("--op-types", metavar="A,B", help="with --sparse-ratio: module classes (default: the pruner's)")
    p.add_argument("--op-names", metavar="A,B", help="with --sparse-ratio: module names")
    p.add_argument("--speedup", action="store_true", help="shrink the model with ModelSpeedup")
    p.add_argument("--out", metavar="DIR", help="a new folder for the results")
    p.add_argument("--train", metavar="module:function", help="function(model) -> Evaluator")
    p.add_argument("--evaluate", metavar="module:function", help="function(model) -> float")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a pruner argument (JSON value); repeatable")
    p.add_argument("--max-steps", type=int, help="compress(max_steps=...) of movement and scheduled pruners")
    p.add_argument("--max-epochs", type=int, help="compress(max_epochs=...)")
    add_output_options(p)
    p.set_defaults(func=_prune)

    r = sub.add_parser("report", help="print the report of a run folder, or summarise a masks file",
                       formatter_class=EPILOG_FORMATTER, epilog="examples:\n  secateurs report run\n"
                                                                "  secateurs report run/masks.safetensors --json")
    r.add_argument("path", metavar="DIR|MASKS")
    add_output_options(r)
    r.set_defaults(func=_report)

    s = sub.add_parser("speedup", help="shrink a model with its masks; write the sped-up model",
                       formatter_class=EPILOG_FORMATTER,
                       epilog="examples:\n  secateurs speedup torchvision:resnet18 --input-shape 1,3,64,64 "
                              "--masks run/masks.safetensors --out fast\n  secateurs speedup run --out fast")
    add_model_arguments(s)
    s.add_argument("--masks", metavar="FILE", help="masks (save_masks); default: the run folder's")
    s.add_argument("--tolerance", type=float, default=1e-4, help="largest relative output difference (1e-4)")
    s.add_argument("--out", metavar="DIR", help="a new folder for the sped-up model")
    add_output_options(s)
    s.set_defaults(func=_speedup)

    f = sub.add_parser("flops", help="count MACs and parameters per layer",
                       formatter_class=EPILOG_FORMATTER,
                       epilog="examples:\n  secateurs flops torchvision:resnet18\n  secateurs flops run --json")
    add_model_arguments(f)
    add_output_options(f)
    f.set_defaults(func=_flops)
