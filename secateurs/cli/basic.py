"""``secateurs demo``, ``secateurs list`` and ``secateurs masks``."""

from __future__ import annotations

import argparse

from .._registry import PRUNERS
from ._common import EPILOG_FORMATTER, add_output_options, emit


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(epochs=args.epochs, finetune_epochs=args.finetune_epochs, out_dir=args.out, seed=args.seed)
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in PRUNERS:
        cls = PRUNERS.get(name)
        rows.append({"name": name, "class": cls.__name__, "summary": (cls.__doc__ or "").strip().splitlines()[0]})
    text = "\n".join(f"{r['name']:20s} {r['class']:28s} {r['summary']}" for r in rows)
    emit(args, text, rows)
    return 0


def masks_rows(masks) -> list[dict]:
    """One row per mask: module, target, shape, pruned count, numel, pruned fraction."""
    rows = []
    for module_name, targets in masks.items():
        for target, mask in targets.items():
            pruned = mask.numel() - int(mask.count_nonzero())
            rows.append({"module": module_name, "target": target, "shape": list(mask.shape), "pruned": pruned,
                         "numel": mask.numel(), "sparsity": pruned / mask.numel() if mask.numel() else 0.0})
    return rows


def _masks(args: argparse.Namespace) -> int:
    from ..masks import load_masks

    rows = masks_rows(load_masks(args.path))
    text = "\n".join(f"{r['module']}.{r['target']}  {'x'.join(map(str, r['shape']))}  {r['sparsity']:.2%} pruned"
                     for r in rows)
    emit(args, text, rows)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="train a small CNN on real digits, prune it, fine-tune, report",
                          formatter_class=EPILOG_FORMATTER, epilog="example:\n  secateurs demo --epochs 1")
    demo.add_argument("--epochs", type=int, default=2, help="training epochs before pruning (default 2)")
    demo.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs (default 1)")
    demo.add_argument("--out", default="out", help="folder for the saved masks (default ./out)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    lister = sub.add_parser("list", help="list the pruners", formatter_class=EPILOG_FORMATTER,
                            epilog="example:\n  secateurs list --json")
    add_output_options(lister)
    lister.set_defaults(func=_list)
    masks = sub.add_parser("masks", help="summarise a masks file written by save_masks",
                           formatter_class=EPILOG_FORMATTER, epilog="example:\n  secateurs masks run/masks.safetensors")
    masks.add_argument("path")
    add_output_options(masks)
    masks.set_defaults(func=_masks)
