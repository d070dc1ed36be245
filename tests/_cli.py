"""Shared by the command's tests: run `python -m secateurs` as a user does, read its one error line,
and write a run folder the way `secateurs prune --speedup --out` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import secateurs

ROOT = Path(__file__).resolve().parents[1]
SHAPE = [1, 3, 64, 64]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SECATEURS_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "secateurs", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[secateurs]")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def make_run_folder(folder: Path) -> Path:
    """A run folder as `secateurs prune --speedup --out` writes it: resnet18, conv channels halved."""
    import torchvision

    folder.mkdir()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(SHAPE)
    secateurs.L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    secateurs.ModelSpeedup(model, x).speedup_model()
    secateurs.save_pruned_model(model, folder / "model.safetensors")
    manifest = {"format": "secateurs.cli-run/1", "state": "sped-up",
                "source": {"model": "torchvision:resnet18", "weights": None,
                           "input": {"shape": SHAPE, "factory": None}}}
    (folder / "secateurs.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder
