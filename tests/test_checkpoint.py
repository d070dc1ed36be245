"""Checkpoints: atomic, complete or refused, and a faithful restore of RNGs and optimizers."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from secateurs.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    module_state,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_round_trip_and_the_latest_round_wins(tmp_path):
    save_checkpoint(tmp_path, 1, {"a": torch.arange(3)}, {"round": 1})
    save_checkpoint(tmp_path, 12, {"a": torch.arange(5), "b": torch.ones(2, 2, dtype=torch.bool)}, {"round": 12})
    (tmp_path / ".partial-xyz.safetensors").write_bytes(b"half a file")
    path = latest_checkpoint(tmp_path)
    assert path.name == "round-000012.safetensors"
    tensors, meta = load_checkpoint(path)
    assert meta == {"round": 12} and torch.equal(tensors["a"], torch.arange(5)) and tensors["b"].dtype == torch.bool
    assert latest_checkpoint(tmp_path / "missing") is None


def test_shared_storage_is_saved_apart(tmp_path):
    base = torch.arange(6.0)
    save_checkpoint(tmp_path, 0, {"x": base, "y": base[:3]}, {})
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(tensors["y"], torch.arange(3.0))


def test_a_truncated_or_altered_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 0, {"w": torch.randn(64)}, {"round": 0})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    altered = bytearray(data)
    altered[-3] ^= 0xFF  # one byte of the tensor data
    path.write_bytes(bytes(altered))
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


def test_an_altered_description_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_checkpoint(tmp_path, 0, {"w": torch.randn(4)}, {"round": 0, "steps": 10})
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    header["meta"] = header["meta"].replace('"steps": 10', '"steps": 99')
    save_file(load_file(str(path)), str(path), metadata=header)  # same tensors and checksum, other JSON
    with pytest.raises(ValueError, match="damaged: its tensors or description do not match the checksum"):
        load_checkpoint(path)


def test_a_pickle_is_not_loaded(tmp_path):
    path = tmp_path / "round-000000.safetensors"
    path.write_bytes(pickle.dumps({"w": torch.ones(2)}))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    fingerprint = {"pruner": "agp", "config_list": [{"sparse_ratio": 0.5}], "model": {"fc.weight": [4, 4]}}
    path = save_checkpoint(tmp_path, 2, {}, {"fingerprint": fingerprint})
    load_checkpoint(path, expect=fingerprint)
    other = {**fingerprint, "config_list": [{"sparse_ratio": 0.75}]}
    with pytest.raises(ValueError, match=r"another run: config_list.*0\.75.*0\.5"):
        load_checkpoint(path, expect=other)
    save_checkpoint(tmp_path, 3, {}, {"fingerprint": {**fingerprint, "model": {"fc.weight": [4, 4], "fc.bias": [4]}}})
    with pytest.raises(ValueError, match="model.fc.bias is in the checkpoint but not in this run"):
        load_checkpoint(latest_checkpoint(tmp_path), expect=fingerprint)


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path, 0, {}, {"model": nn.Linear(2, 2)})


def test_random_states_are_restored_exactly(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    tensors, meta = rng_state()
    save_checkpoint(tmp_path, 0, tensors, {"rng": meta})
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    loaded, saved = load_checkpoint(latest_checkpoint(tmp_path))
    set_rng_state(loaded, saved["rng"])
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_model_and_optimizer_state_restore_the_next_step_bit_for_bit(tmp_path):
    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        return model, torch.optim.Adam(model.parameters(), lr=0.01)

    x = torch.randn(16, 4)
    model, opt = make()
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    tensors, meta = optimizer_state(opt, "optim/0/")
    tensors.update(module_state(model))
    save_checkpoint(tmp_path, 3, tensors, {"optim": meta})
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    restored, opt2 = make()
    loaded, saved = load_checkpoint(latest_checkpoint(tmp_path))
    restored.load_state_dict({k[len("model/"):]: v for k, v in loaded.items() if k.startswith("model/")})
    load_optimizer_state(opt2, loaded, saved["optim"], "optim/0/")
    opt2.zero_grad()
    restored(x).square().mean().backward()
    opt2.step()
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in expected.items())


_WRITER = """
import sys, torch
from secateurs.checkpoint import save_checkpoint
folder = sys.argv[1]
save_checkpoint(folder, 1, {"w": torch.zeros(4)}, {"round": 1})
print("first", flush=True)
k = 2
while True:  # keep writing big checkpoints until killed
    save_checkpoint(folder, k, {"w": torch.full((8_000_000,), float(k))}, {"round": k})
    k += 1
"""


def test_a_kill_while_writing_leaves_the_last_complete_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first"
        time.sleep(1.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    tensors, meta = load_checkpoint(latest_checkpoint(tmp_path))  # whichever round finished, complete
    assert bool((tensors["w"] == float(meta["round"]) if meta["round"] > 1 else tensors["w"] == 0).all())
