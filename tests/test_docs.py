"""The code and the output shown in README.md and docs/ are checked against real runs.

What each fenced block of a page is, by its info string:

- ```python: runs as a test. The blocks of a page run in page order, each in a fresh
  namespace, in one temporary working folder per page.
- ```python nni: NNI code shown for comparison. It is not run (NNI is not installed).
- ```bash: commands for the reader (``make demo``). They are not run.
- ```text (or ```console, or no info string): output, and it must be tied to a check in one
  of three ways:
  1. right after a ```python block, with only blank lines between: it is what that block
     prints to stdout;
  2. it starts with a ``$ `` line: a shell session. Its commands run in the page's folder,
     after the page's earlier blocks (``secateurs`` is ``python -m secateurs`` of this
     interpreter), and the block must equal the session: each ``$ command`` line followed
     by what the command wrote to stdout and stderr;
  3. it holds call signatures ``Name(args)`` of names that ``secateurs`` exports: each must
     equal ``inspect.signature`` (without annotations).

Output is compared after dropping trailing whitespace and trailing blank lines. In the
expected text each ``...`` stands for one number (a timing, say) or for itself (argparse
prints ``...``), and nothing else. When the paragraph just before a block contains
``Output of one run; numbers vary.``, every number of both texts is replaced by ``...``
before they are compared: such a block shows one run of a command whose numbers depend
on the machine, and the check covers the structure of its lines.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import secateurs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
_FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_OUTPUT_INFOS = ("", "text", "console", "output", "txt", "plaintext", "pycon", "shell-session")
_NOT_RUN_INFOS = ("python nni", "bash")
_ILLUSTRATIVE = "Output of one run; numbers vary."
_NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?"
_SESSION_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # first line of the block's text, 1-based
    info: str
    text: str
    before: str  # the page's text between the previous block and this one

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks, end = [], 0
    for match in _FENCE.finditer(text):
        first_line = text.count("\n", 0, match.start(2)) + 1
        info = " ".join(match.group(1).split())
        blocks.append(Block(page, first_line, info, match.group(2), text[end : match.start()]))
        end = match.end()
    return blocks


BLOCKS = [b for page in PAGES for b in _blocks(page)]
PYTHON_BLOCKS = [b for b in BLOCKS if b.info == "python"]


def _signatures(text: str) -> list[tuple[str, str]]:
    """[(name, signature)] when ``text`` holds only call signatures of names secateurs exports."""
    parts = re.split(r"(?<=\))\s+(?=\w+\()", " ".join(text.split()))
    found = [(m.group(1), part) for part in parts if (m := re.fullmatch(r"(\w+)\(.*\)", part))]
    ok = len(found) == len(parts) and all(name in secateurs.__all__ for name, _ in found)
    return found if ok else []


def _checks(blocks: list[Block]) -> dict[Block, str | None]:
    """For each output block of one page, how it is checked: "stdout", "session",
    "signature", or None when nothing ties it to a check."""
    checks = {}
    for previous, block in zip([None, *blocks], blocks):
        if block.info not in _OUTPUT_INFOS:
            continue
        if block.text.startswith("$ "):
            checks[block] = "session"
        elif previous is not None and previous.info == "python" and not block.before.strip():
            checks[block] = "stdout"
        elif _signatures(block.text):
            checks[block] = "signature"
        else:
            checks[block] = None
    return checks


CHECKS = {b: check for page in PAGES for b, check in _checks(_blocks(page)).items()}
CHECKED_OUTPUT = [b for b, check in CHECKS.items() if check is not None]


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def assert_output_matches(expected: str, actual: str, where: str, illustrative: bool = False) -> None:
    """``actual`` equals ``expected``, where each ``...`` of ``expected`` stands for one number
    (or for ``...``); with ``illustrative``, every number of both is left out of the comparison."""
    expected, actual = _normalise(expected), _normalise(actual)
    if illustrative:
        expected, actual = (re.sub(_NUMBER, "...", t) for t in (expected, actual))
        matched = expected == actual
    else:
        pattern = f"(?:{_NUMBER}|\\.\\.\\.)".join(re.escape(part) for part in expected.split("..."))
        matched = re.fullmatch(pattern, actual) is not None
    assert matched, f"{where}: the block differs from a real run.\n--- block\n{expected}\n--- real run\n{actual}"


# -- running a page ---------------------------------------------------------------------


def _session_script(text: str) -> str:
    """A bash script that replays the ``$`` lines of ``text`` and prints a transcript."""
    lines = ["exec 2>&1", 'secateurs() { "$SECATEURS_PYTHON" -m secateurs "$@"; }', "__status=0"]
    for line in text.splitlines():
        if line.startswith("$ "):
            # The prompt is printed between commands; `(exit ...)` hands the previous
            # command's status on, so that `echo $?` reports it.
            lines += [f"printf '%s\\n' {shlex.quote(line)}", "(exit $__status)", line[2:], "__status=$?"]
    return "\n".join(lines) + "\n"


def _run_session(text: str, folder: str) -> str:
    package_root = str(Path(secateurs.__file__).resolve().parent.parent)
    env = dict(os.environ, SECATEURS_PYTHON=sys.executable, COLUMNS="80",
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(["bash", "-c", _session_script(text)], check=False, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=_SESSION_TIMEOUT_S)
    return done.stdout


@dataclass
class Result:
    stdout: str = ""
    error: BaseException | None = None


@contextlib.contextmanager
def _working_folder(folder: str):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def _exec_python(block: Block) -> Result:
    # Leading newlines make tracebacks show the line numbers of the Markdown page.
    compiled = compile("\n" * (block.line - 1) + block.text, str(block.page), "exec")
    namespace = {"__name__": "__docs__"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            exec(compiled, namespace)  # noqa: S102 - the docs' own code
    except Exception as err:  # noqa: BLE001 - reported by the block's own test
        return Result(out.getvalue(), err)
    return Result(out.getvalue())


@cache
def run_page(page: Path) -> dict[int, Result]:
    """Run a page's python blocks and shell sessions in order; first line -> result."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="secateurs-docs-") as folder, _working_folder(folder):
        for block in _blocks(page):
            if block.info == "python":
                results[block.line] = _exec_python(block)
            elif CHECKS.get(block) == "session":
                try:
                    results[block.line] = Result(_run_session(block.text, folder))
                except subprocess.TimeoutExpired as err:
                    results[block.line] = Result("", err)
    return results


# -- tests ------------------------------------------------------------------------------


def test_docs_have_python_blocks():
    assert any(b.page.is_relative_to(DOCS) for b in PYTHON_BLOCKS), f"no ```python blocks found under {DOCS}"


def test_readme_python_blocks_are_run():
    readme = [b for b in PYTHON_BLOCKS if b.page == ROOT / "README.md"]
    assert readme, "README.md has no ```python block"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_docs_python_block_runs(block):
    error = run_page(block.page)[block.line].error
    if error is not None:
        raise error


@pytest.mark.parametrize("block", CHECKED_OUTPUT, ids=[b.id for b in CHECKED_OUTPUT])
def test_docs_output_block_matches_a_real_run(block):
    check = CHECKS[block]
    if check == "signature":
        for name, documented in _signatures(block.text):
            try:
                obj = getattr(secateurs, name)
            except ImportError as err:  # an optional evaluator whose package is not installed
                pytest.skip(str(err))
            sig = inspect.signature(obj)
            sig = sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                              return_annotation=sig.empty)
            assert documented.replace('"', "'") == f"{name}{sig}", f"{block.id}: {name}'s signature differs"
        return
    results = run_page(block.page)
    if check == "stdout":
        source = BLOCKS[BLOCKS.index(block) - 1]
        result = results[source.line]
        if result.error is not None:
            pytest.fail(f"{block.id}: the python block above it raised {result.error!r}")
    else:
        result = results[block.line]
        if result.error is not None:
            raise result.error
    illustrative = _ILLUSTRATIVE in block.before.strip().split("\n\n")[-1]
    assert_output_matches(block.text, result.stdout, block.id, illustrative)


def test_every_block_is_checked():
    """Every output block is tied to a check, and every block has a known kind."""
    unchecked = [f"{b.id} (```{b.info})" for b, check in CHECKS.items() if check is None]
    unknown = [f"{b.id} (```{b.info})" for b in BLOCKS
               if b.info not in _OUTPUT_INFOS + _NOT_RUN_INFOS and b.info != "python"]
    assert not unchecked, f"output blocks that no check ties to a real run: {unchecked}; see {__doc__}"
    assert not unknown, f"blocks of an unknown kind: {unknown}; see {__doc__}"


def test_an_output_block_without_a_check_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nprint(1)\n```\n\n```text\n1\n```\n\n"   # what the block above prints
        "Prose.\n\n```text\n1\n```\n\n"                        # tied to nothing
        "```text\n$ secateurs list\n```\n\n"                     # a shell session
        "```text\nL1NormPruner(model, config_list, *, dummy_input=None)\n```\n\n"
        "```text\nNotOurs(model)\n```\n",
        encoding="utf-8",
    )
    checks = [check for _, check in sorted(_checks(_blocks(page)).items(), key=lambda item: item[0].line)]
    assert checks == ["stdout", None, "session", "signature", None]


def test_output_matching_rules():
    assert_output_matches("total time ... s", "total time 36.4 s", "timing")
    assert_output_matches("usage: secateurs {demo,list} ...", "usage: secateurs {demo,list} ...", "literal")
    assert_output_matches("a  \nb\n\n", "a\nb", "trailing whitespace")
    for expected, actual in (("total time ... s", "total time fast s"), ("x ...", "x 1 2"), ("a", "b")):
        with pytest.raises(AssertionError):
            assert_output_matches(expected, actual, "mismatch")
    assert_output_matches("accuracy 95.70% of 1,000", "accuracy 94.80% of 2,000", "one run", illustrative=True)
    with pytest.raises(AssertionError):
        assert_output_matches("accuracy 95.70%", "loss 0.1", "one run", illustrative=True)


def test_default_op_types_table_matches_the_pruners():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    header = "| pruner | `op_types: [\"default\"]` selects |"
    assert header in text, f"docs/config.md has no table starting with {header}"
    rows = text.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    documented = {}
    for row in rows:
        pruner, types = (cell.strip() for cell in row.strip("|").split("|"))
        documented[pruner.strip("`")] = tuple(t.strip().strip("`") for t in types.split(","))
    # Scheduled pruners (LinearPruner, AGPPruner) prune with the configs of the pruner they wrap.
    actual = {cls.__name__: tuple(cls.default_op_types) for cls in map(secateurs.PRUNERS.get, secateurs.PRUNERS)
              if not getattr(cls, "wraps", False)}
    assert documented == actual
