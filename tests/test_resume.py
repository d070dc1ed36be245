"""Checkpoint and resume of the long-running pruners, as a user meets them: a run killed
with SIGKILL and started again ends bit for bit like one that was never interrupted; a
checkpoint of another run, or a damaged one, is refused before anything changes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from secateurs import ADMMPruner, AGPPruner, L1NormPruner, LevelPruner, LotteryTicketPruner, TorchEvaluator
from secateurs.checkpoint import latest_checkpoint
from secateurs.masks import get_masks

WORKER = str(Path(__file__).with_name("_resume_worker.py"))
ROOT = str(Path(__file__).resolve().parent.parent)


def _run(kind, folder, out, kill_at=None):
    args = [sys.executable, WORKER, kind, str(folder) if folder else "-", str(out)]
    if kill_at is not None:
        args.append(str(kill_at))
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _result(path):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


# Kill points (optimizer steps) and the last round finished by then: Linear/AGP train 3 steps
# a round, LotteryTicket and ADMM 4.
KINDS = [("linear", 5, 1), ("agp", 8, 2), ("lottery", 6, 1), ("lottery-rewind", 7, 1), ("admm", 10, 2)]


@pytest.mark.parametrize(("kind", "kill_at", "finished"), KINDS, ids=[k for k, _, _ in KINDS])
def test_a_killed_run_resumes_to_the_same_result_bit_for_bit(kind, kill_at, finished, tmp_path):
    whole = _run(kind, tmp_path / "whole", tmp_path / "whole.safetensors")
    assert whole.returncode == 0, whole.stderr
    killed = _run(kind, tmp_path / "killed", tmp_path / "unused.safetensors", kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no handler, no cleanup ran
    assert not (tmp_path / "unused.safetensors").exists()
    assert latest_checkpoint(tmp_path / "killed").name == f"round-{finished:06d}.safetensors"
    resumed = _run(kind, tmp_path / "killed", tmp_path / "resumed.safetensors")
    assert resumed.returncode == 0, resumed.stderr
    plain = _run(kind, None, tmp_path / "plain.safetensors")  # checkpointing changes nothing
    assert plain.returncode == 0, plain.stderr

    (a, meta_a), (b, meta_b), (c, meta_c) = (_result(tmp_path / f"{n}.safetensors")
                                             for n in ("whole", "resumed", "plain"))
    assert set(a) == set(b) == set(c) and any(k.startswith("mask/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], c[key]), key
    assert json.loads(meta_a["history"]) == json.loads(meta_b["history"]) == json.loads(meta_c["history"])
    assert meta_a["sched"] == meta_b["sched"]
    # The resumed process trained only from the start of the round that was cut short.
    assert int(meta_b["steps_in_process"]) < int(meta_a["steps_in_process"])


def _evaluator(model, calls=None):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        if calls is not None:
            calls.append(1)
        for batch in data * 10:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                          lambda b, m: F.cross_entropy(m(b[0]), b[1]))


CONFIG = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.5}]


def _lottery(model, folder, config=CONFIG, calls=None):
    return LotteryTicketPruner(model, config, _evaluator(model, calls), total_iteration=2, training_steps=2,
                               checkpoint_dir=folder)


def test_a_finished_run_is_restored_without_training_again(cnn, tmp_path):
    first = _lottery(cnn, tmp_path)
    _, masks = first.compress()
    torch.manual_seed(0)
    fresh = type(cnn)()
    calls = []
    again = _lottery(fresh, tmp_path, calls=calls)
    _, restored = again.compress()
    assert calls == []
    for module_name, entry in masks.items():
        for target, mask in entry.items():
            assert torch.equal(restored[module_name][target], mask)
    assert list(fresh.state_dict()) == list(cnn.state_dict())  # masks attached in the run's order
    for (name, a), (_, b) in zip(cnn.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert [{k: v for k, v in r.items() if k != "masks"} for r in again.history] == \
        [{k: v for k, v in r.items() if k != "masks"} for r in first.history]
    for a, b in zip(again.history, first.history):
        assert all(torch.equal(a["masks"][m][t], b["masks"][m][t]) for m in b["masks"] for t in b["masks"][m])


def _unchanged(model, before):
    return get_masks(model) == {} and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("other", "words"), [
    (lambda m, d: _lottery(m, d, config=[{**CONFIG[0], "sparse_ratio": 0.6}]), r"config_list\.0\.sparse_ratio: "
     r"this run has 0\.6, the checkpoint 0\.5"),
    (lambda m, d: LotteryTicketPruner(m, CONFIG, _evaluator(m), total_iteration=3, training_steps=2,
                                      checkpoint_dir=d), "arguments.total_iteration: this run has 3"),
    (lambda m, d: ADMMPruner(m, CONFIG, _evaluator(m), 2, training_steps=2, checkpoint_dir=d),
     "pruner: this run has \"admm\", the checkpoint \"lottery\""),
    (lambda m, d: AGPPruner(LevelPruner(m, CONFIG), 1, 2, _evaluator(m), checkpoint_dir=d), "pruner: this run has"),
], ids=["config", "arguments", "pruner", "wrapped"])
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(other, words, cnn, tmp_path):
    _lottery(cnn, tmp_path).compress()
    torch.manual_seed(0)
    fresh = type(cnn)()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="cannot resume from checkpoint_dir .*written for another run: .*" + words):
        other(fresh, tmp_path).compress()
    assert _unchanged(fresh, before)


def test_a_checkpoint_of_another_model_is_refused(cnn, tmp_path):
    import torch.nn as nn

    _lottery(cnn, tmp_path).compress()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(288, 10))
    with pytest.raises(ValueError, match=r"written for another run: .*model\.class: this run has \"Sequential\", "
                                         r"the checkpoint \"SmallCNN\""):
        LotteryTicketPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], _evaluator(model),
                            total_iteration=2, training_steps=2, checkpoint_dir=tmp_path).compress()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_refused_and_nothing_changes(damage, cnn, tmp_path):
    _lottery(cnn, tmp_path).compress()
    path = latest_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    torch.manual_seed(0)
    fresh = type(cnn)()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint_dir .*(truncated or damaged|is damaged)"):
        _lottery(fresh, tmp_path).compress()
    assert _unchanged(fresh, before)
    # As the message says: without the damaged file, the run goes on from the one before it.
    path.unlink()
    _lottery(fresh, tmp_path).compress()
    for (name, a), (_, b) in zip(cnn.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_no_checkpoint_dir_writes_nothing_and_a_file_is_refused(cnn, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="'checkpoint_dir' of LotteryTicketPruner must be a folder"):
        _lottery(cnn, tmp_path / "file")
    with pytest.raises(TypeError, match="'checkpoint_dir' parameter of ADMMPruner must be a path or None"):
        ADMMPruner(cnn, CONFIG, _evaluator(cnn), 2, training_steps=2, checkpoint_dir=3)


def test_every_round_boundary_leaves_a_checkpoint_with_the_optimizer_state(cnn, tmp_path):
    from secateurs.checkpoint import load_checkpoint

    seen = []
    ev = _evaluator(cnn)
    original = ev.training_func

    def loop(*args):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        original(*args)

    ev.training_func = loop
    AGPPruner(L1NormPruner(cnn, CONFIG), 2, 3, ev, checkpoint_dir=tmp_path).compress(max_steps=8)
    # Each round's training starts after the last round's checkpoint; the two newest are kept.
    assert seen == [[], ["round-000001.safetensors"], ["round-000001.safetensors", "round-000002.safetensors"],
                    ["round-000002.safetensors", "round-000003.safetensors"]]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["round-000003.safetensors", "round-000004.safetensors"]  # three rounds, then the end
    tensors, meta = load_checkpoint(tmp_path / names[0])
    assert meta["round"] == 3 and meta["steps"] == 6 and not meta["done"]
    assert any(k.startswith("train/optim/0/state/") and k.endswith("momentum_buffer") for k in tensors)
    assert {"rng/torch", "rng/numpy"} <= set(tensors) and any(k.startswith("masks/") for k in tensors)
    assert [r["round"] for r in json.loads(json.dumps(meta["pruner"]["history"]))] == [1, 2, 3]
