"""The ``secateurs`` command: one module per group of subcommands, each with ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ._load import CommandFailed, UsageError

# Modules of this package that add subcommands, in the order `secateurs --help` lists them.
_COMMAND_MODULES = ("basic", "prune", "sensitivity", "export", "bench")

_DESCRIPTION = """Prune PyTorch models.

examples:
  secateurs prune torchvision:resnet18 --pruner l1norm --sparse-ratio 0.5 --speedup --out run
  secateurs report run
  secateurs export run --onnx run/model.onnx
  secateurs bench torchvision:resnet18 --pruned run
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            continue  # a subcommand module not written yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status: 0 done, 1 failed, 2 bad usage or input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        # A warning is one line about the user's model, not a pointer into our source.
        print(f"secateurs {command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        return args.func(args)
    except UsageError as err:
        print(f"secateurs {args.command}: error: {err}", file=sys.stderr)
        return 2
    except CommandFailed as err:
        print(f"secateurs {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        # The library's own checks of the user's input (configs, masks, arguments).
        message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        message = message.removeprefix("secateurs.prune: ")  # the command's own name is already shown
        print(f"secateurs {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`secateurs ... | head`): not an error of the command.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"secateurs {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line, not a traceback, unless asked for
        if os.environ.get("SECATEURS_TRACEBACK"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"secateurs {args.command}: failed: {type(err).__name__}: {first} "
              "(SECATEURS_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


__all__ = ["CommandFailed", "UsageError", "build_parser", "main"]
