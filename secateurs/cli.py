"""The ``secateurs`` command."""

from __future__ import annotations

import argparse
import sys

from ._registry import PRUNERS


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(epochs=args.epochs, finetune_epochs=args.finetune_epochs, out_dir=args.out, seed=args.seed)
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in PRUNERS:
        cls = PRUNERS.get(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:20s} {cls.__name__:28s} {summary}")
    return 0


def _masks(args: argparse.Namespace) -> int:
    from .masks import load_masks

    masks = load_masks(args.path)
    for module_name, targets in masks.items():
        for target, mask in targets.items():
            pruned = mask.numel() - int(mask.count_nonzero())
            shape = "x".join(map(str, mask.shape))
            ratio = pruned / mask.numel() if mask.numel() else 0.0
            print(f"{module_name}.{target}  {shape}  {ratio:.2%} pruned")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secateurs", description="Prune PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small CNN on real digits, prune it, fine-tune, report")
    demo.add_argument("--epochs", type=int, default=2, help="training epochs before pruning (default 2)")
    demo.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs (default 1)")
    demo.add_argument("--out", default="out", help="folder for the saved masks (default ./out)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    lister = sub.add_parser("list", help="list the pruners")
    lister.set_defaults(func=_list)
    masks = sub.add_parser("masks", help="summarise a masks file written by save_masks")
    masks.add_argument("path")
    masks.set_defaults(func=_masks)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        print(f"secateurs {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
