"""Helpers for the one error-message format users see ("did you mean ...")."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return " (did you mean 'a' or 'b'?)" for the closest candidates, or ""."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
