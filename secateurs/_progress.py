"""A one-line progress display on stderr for long runs (rounds of iterative pruners, ...)."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """Rewrites one stderr line per update: ``"<title> round 2/5 | sparsity 0.42"``.

    Args:
        total: the number of rounds.
        title: what runs (the pruner's name).
        enabled: True or False; None (the default) shows it only when stderr is a terminal.
        stream: where to write (stderr).
        noun: what one step of ``total`` is called ("round", "iteration").
    """

    def __init__(self, total: int, title: str, enabled: bool | None = None, stream: TextIO | None = None,
                 noun: str = "round") -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"The 'progress' parameter of {title} must be True, False or None; got {enabled!r}.")
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled if enabled is not None else bool(isatty and isatty())
        self.total, self.title, self.noun, self._shown = total, title, noun, False

    def update(self, done: int, **fields: float | str) -> None:
        if not self.enabled:
            return
        parts = [f"{self.title} {self.noun} {done}/{self.total}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        self.stream.write("\r" + " | ".join(parts) + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
