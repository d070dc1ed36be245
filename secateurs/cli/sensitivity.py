"""``secateurs sensitivity``: the score with each layer alone pruned to each ratio."""

from __future__ import annotations

import argparse
import json
import math

from ._common import (EPILOG_FORMATTER, add_model_arguments, add_output_options, check_new_folder, dumps, emit,
                      model_from_args, new_folder, progress_flag, stage, table)
from ._load import UsageError, load_callable

_EPILOG = """examples:
  secateurs sensitivity model.py:make --evaluate model.py:evaluate --input-shape 1,1,28,28
  secateurs sensitivity torchvision:resnet18 --evaluate my_eval.py:accuracy --ratios 0.25,0.5,0.75 \\
      --op-types Conv2d --max-drop 0.01 --out sens

--evaluate names a function model -> float, higher is better (accuracy, or minus a loss).
With --max-drop, each layer gets the largest ratio whose score drop, and the drop of every
smaller ratio, is at most that; the suggested config_list is printed (and written with --out).
"""


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UsageError(f"{option} {text!r} names nothing; give comma-separated names.")
    return names


def _ratios(text: str) -> tuple[float, ...]:
    from ..analysis.sensitivity import check_ratios

    try:
        ratios = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--ratios {text!r} is not a comma-separated list of numbers such as 0.25,0.5,0.75.") from None
    try:
        return check_ratios(ratios)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--ratios {text!r}: {err}") from None


def _sensitivity(args: argparse.Namespace) -> int:
    from ..analysis.sensitivity import check_pruner, sensitivity

    try:
        check_pruner(args.pruner)
    except (KeyError, ValueError) as err:
        raise UsageError(f"--pruner: {err.args[0]}") from None
    ratios = _ratios(args.ratios)
    if args.max_drop is not None and not (math.isfinite(args.max_drop) and args.max_drop >= 0):
        raise UsageError(f"--max-drop must be a finite number >= 0; got {args.max_drop!r}.")
    op_types, op_names = _names(args.op_types, "--op-types"), _names(args.op_names, "--op-names")
    out = check_new_folder(args.out)
    evaluate = load_callable(args.evaluate, "--evaluate")
    loaded = model_from_args(args)
    stage(args, f"scoring each layer pruned by {args.pruner} to {len(ratios)} ratios")
    result = sensitivity(loaded.model, evaluate, pruner=args.pruner, ratios=ratios, op_types=op_types,
                         op_names=op_names, dummy_input=loaded.example, progress=progress_flag(args))
    suggested = result.suggest(args.max_drop) if args.max_drop is not None else None
    if out is not None:
        stage(args, f"writing {out}")
        with new_folder(out) as work:
            (work / "sensitivity.md").write_text(result.to_markdown(), encoding="utf-8")
            (work / "sensitivity.json").write_text(dumps(result.to_dict()) + "\n", encoding="utf-8")
            if suggested is not None:
                (work / "suggested_config.json").write_text(dumps(suggested) + "\n", encoding="utf-8")
            try:
                result.plot(work / "sensitivity.png")
            except ImportError as err:
                stage(args, f"no plot: {err}")
    rows = [(layer, *(f"{s:.6g}" for s in result.scores[layer])) for layer in result.layers]
    text = f"baseline (dense model): {result.baseline:.6g}\n\n" + \
        table(("layer", *(f"{r:g}" for r in result.ratios)), rows, right=range(1, len(ratios) + 1))
    if suggested:
        text += f"\n\nsuggested config_list (score drop <= {args.max_drop:g} per layer):\n" + \
            json.dumps(suggested, indent=2)
    elif suggested is not None:
        text += f"\n\nsuggested config_list: [] (every layer drops the score by more than {args.max_drop:g} " \
            f"already at ratio {ratios[0]:g})"
    text += f"\n\nwritten to {out}/" if out else ""
    data = result.to_dict() | ({"suggested": suggested} if suggested is not None else {}) | \
        ({"out": str(out)} if out else {})
    emit(args, text, data)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sensitivity", help="score the model with each layer alone pruned to each ratio",
                            description="Prune one layer at a time (of a copy) to each ratio and score it with "
                                        "--evaluate: which layers tolerate pruning, and how much.",
                            formatter_class=EPILOG_FORMATTER, epilog=_EPILOG)
    add_model_arguments(parser)
    parser.add_argument("--evaluate", metavar="module:function", required=True,
                        help="function(model) -> float, higher is better")
    parser.add_argument("--pruner", default="l1norm",
                        help="a one-shot pruner: level, l1norm, l2norm or fpgm (default l1norm)")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", metavar="R,R,...",
                        help="sparse ratios to try, increasing, each in (0, 1) (default 0.1,...,0.9)")
    parser.add_argument("--op-types", metavar="TYPES", help="layer classes to analyse, such as Conv2d,Linear "
                        "(default: the pruner's default types; the model's output layer only with --op-names)")
    parser.add_argument("--op-names", metavar="NAMES", help="layer names to analyse, such as features.0,classifier")
    parser.add_argument("--max-drop", type=float, metavar="D",
                        help="also suggest a config_list: per layer the largest ratio that drops the score by <= D")
    parser.add_argument("--out", metavar="DIR", help="write sensitivity.md, .json, .png (and suggested_config.json) "
                                                     "into this new folder")
    add_output_options(parser)
    parser.set_defaults(func=_sensitivity)
