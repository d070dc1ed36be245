"""Every ```python block in docs/ runs on its own and does what its asserts say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def _python_blocks() -> list[tuple[str, str, int, str]]:
    """(test id, page path, first line of the code, code) for every python block."""
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            first_line = text.count("\n", 0, match.start(1)) + 1
            name = page.relative_to(DOCS).as_posix()
            blocks.append((f"{name}:{first_line}", str(page), first_line, match.group(1)))
    return blocks


BLOCKS = _python_blocks()


def test_docs_have_python_blocks():
    assert BLOCKS, f"no ```python blocks found under {DOCS}"


@pytest.mark.parametrize(("page", "first_line", "code"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_docs_python_block_runs(page, first_line, code):
    # Leading newlines make tracebacks show the line numbers of the Markdown page.
    compiled = compile("\n" * (first_line - 1) + code, page, "exec")
    namespace = {"__name__": "__docs__"}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compiled, namespace)
