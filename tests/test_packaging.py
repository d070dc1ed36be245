"""Packaging: the package imports without its optional dependencies, and builds cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"LightningEvaluator": "lightning", "TransformersEvaluator": "transformers"}

# Runs in a fresh interpreter where transformers and Lightning cannot be imported, as after
# a plain `pip install secateurs`; prints what it found as JSON.
_WITHOUT_OPTIONAL = """
import importlib.abc, json, sys

BLOCKED = ("transformers", "lightning", "pytorch_lightning")

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
found = {"star": None, "names": {}, "lightning_call": None}
try:
    exec("from secateurs import *", {})
except Exception as err:
    found["star"] = f"{type(err).__name__}: {err}"
import secateurs
found["all"] = list(secateurs.__all__)
for name in sorted(set(secateurs.__all__) | {"LightningEvaluator", "TransformersEvaluator"}):
    try:
        value = getattr(secateurs, name)
    except Exception as err:
        found["names"][name] = ["error", type(err).__name__, str(err)]
    else:
        found["names"][name] = ["ok", type(value).__name__, ""]
if found["names"]["LightningEvaluator"][0] == "ok":
    try:
        secateurs.LightningEvaluator(object(), object())
    except Exception as err:
        found["lightning_call"] = [type(err).__name__, str(err)]
found["imported"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def without_optional() -> dict:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_OPTIONAL], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_star_import_works_without_transformers_and_lightning(without_optional):
    assert without_optional["star"] is None, f"`from secateurs import *` failed: {without_optional['star']}"
    assert without_optional["imported"] == []
    # The evaluators of frameworks that are not installed are left out of `__all__`.
    assert not set(OPTIONAL) & set(without_optional["all"])


def test_every_public_name_resolves_without_the_optional_packages(without_optional):
    failed = {name: r for name, r in without_optional["names"].items() if r[0] != "ok" and name not in OPTIONAL}
    assert not failed


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_optional_evaluator_names_its_missing_package(without_optional, name):
    """Without its package, an optional evaluator fails with a message naming the package:
    on access with an ImportError, or (LightningEvaluator, which never imports Lightning
    itself: it finds it from the trainer it is given) when called with anything but a
    Lightning Trainer."""
    package = OPTIONAL[name]
    status, kind, message = without_optional["names"][name]
    if status == "error":
        assert kind in ("ImportError", "ModuleNotFoundError") and package in message, message
        return
    assert name == "LightningEvaluator", f"{name} resolved although {package} cannot be imported"
    kind, message = without_optional["lightning_call"]
    assert kind == "TypeError" and "lightning.Trainer" in message, message


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_wheel_builds_without_setuptools_warnings(tmp_path):
    """The build backend, run on a copy of the sources, warns about nothing (no deprecated
    `license` table), and the wheel's metadata carries the license and the test extra."""
    setuptools = pytest.importorskip("setuptools")
    requirements = pytest.importorskip("packaging.requirements")
    for spec in _pyproject()["build-system"]["requires"]:
        requirement = requirements.Requirement(spec)
        if requirement.name == "setuptools" and setuptools.__version__ not in requirement.specifier:
            pytest.skip(f"installed setuptools {setuptools.__version__} does not satisfy {spec}")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "secateurs", source / "secateurs", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    out.mkdir()
    build = (
        "import json, sys, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from setuptools import build_meta\n"
        f"    wheel = build_meta.build_wheel({str(out)!r})\n"
        "print(json.dumps({'wheel': wheel, 'warnings': [f'{w.category.__name__}: {w.message}' for w in caught]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", build], check=False, cwd=source, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["warnings"] == []
    assert "deprecat" not in (done.stdout + done.stderr).lower()
    with zipfile.ZipFile(out / result["wheel"]) as wheel:
        metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        assert "secateurs/__init__.py" in wheel.namelist()
    assert "License-Expression: MIT" in metadata.splitlines()
    extra = {line.split(";")[0].split(":", 1)[1].strip() for line in metadata.splitlines()
             if line.startswith("Requires-Dist:") and 'extra == "test"' in line}
    assert {"torchvision", "mlxtend==0.25.0", "timm==1.0.31"} <= extra
