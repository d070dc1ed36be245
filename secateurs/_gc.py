"""Pausing Python's cyclic garbage collector around work that makes many short-lived objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees everything).

    A trace, or attaching masks to hundreds of layers, makes many small objects; the full
    collections they trigger walk every object of the process (a large model's included)
    and cost more than the work itself.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
