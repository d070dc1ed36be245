"""Sensitivity analysis: known scores, the suggest rule, the user's model untouched, refusals, the command."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import secateurs
from secateurs.analysis import SensitivityResult, sensitivity

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))


def _zero_rows(layer: nn.Linear) -> float:
    return int((layer.weight == 0).all(dim=1).sum()) / layer.weight.shape[0]


def _evaluate(model: nn.Module) -> float:
    """A score that is a known function of the pruned rows: layer 0 matters 100x more than 2 and 4."""
    return -_zero_rows(model[0]) * 10 - _zero_rows(model[2]) * 0.1 - _zero_rows(model[4]) * 0.1


def _expected(weight: float, ratio: float) -> float:
    # floor(10 * r) of the 10 output rows are pruned (the pruned-count rule), the others not.
    return -(math.floor(10 * ratio) / 10) * weight


def test_scores_are_the_evaluate_of_each_layer_pruned_alone():
    result = sensitivity(_mlp(), _evaluate, ratios=RATIOS)
    assert result.baseline == 0.0
    assert result.pruner == "l1norm"
    assert result.ratios == RATIOS
    assert result.layers == ("0", "2", "4")
    assert result.scores == {"0": tuple(_expected(10, r) for r in RATIOS),
                             "2": tuple(_expected(0.1, r) for r in RATIOS),
                             "4": tuple(_expected(0.1, r) for r in RATIOS)}
    assert result.drop("0", 0.2) == pytest.approx(2.0)
    assert result.drop("2", 0.5) == pytest.approx(0.05)


def test_the_users_model_is_unchanged_and_never_given_to_evaluate():
    model = _mlp()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    seen = []

    def evaluate(m: nn.Module) -> float:
        seen.append(m)
        return _evaluate(m)

    sensitivity(model, evaluate, ratios=(0.5,), dummy_input=torch.randn(2, 4))
    assert secateurs.get_masks(model) == {}
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert [id(p) for p in model.parameters()] == params
    assert model.training
    assert all(m is not model for m in seen)


def test_suggest_takes_the_largest_ratio_within_the_drop():
    result = sensitivity(_mlp(), _evaluate, ratios=RATIOS)
    # Layer 0 drops 1.0 per 0.1 of ratio; layers 2 and 4 drop 0.01 per 0.1: both at 0.5, in one entry.
    assert result.suggest(2.0) == [{"op_names": ["0"], "sparse_ratio": 0.2},
                                   {"op_names": ["2", "4"], "sparse_ratio": 0.5}]
    assert result.suggest(0.5) == [{"op_names": ["2", "4"], "sparse_ratio": 0.5}]
    assert result.suggest(0.025) == [{"op_names": ["2", "4"], "sparse_ratio": 0.2}]
    assert result.suggest(0.001) == []


def test_suggest_stops_at_the_first_ratio_past_the_drop():
    result = SensitivityResult(baseline=1.0, ratios=(0.2, 0.4, 0.6, 0.8), layers=("b", "a"),
                               scores={"b": (0.99, 0.5, 0.99, 0.99), "a": (0.98, 0.97, 0.9, 0.99)}, pruner="l1norm")
    # "b" recovers at 0.6 and 0.8, but 0.4 already dropped too much; 1.0 - 0.97 counts as 0.03.
    assert result.suggest(0.03) == [{"op_names": ["b"], "sparse_ratio": 0.2}, {"op_names": ["a"], "sparse_ratio": 0.4}]
    assert result.suggest(0.5) == [{"op_names": ["a", "b"], "sparse_ratio": 0.8}]
    for bad, exc in ((-0.1, ValueError), (float("nan"), ValueError), ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="max_drop"):
            result.suggest(bad)


def test_a_suggested_config_prunes_the_model():
    model = _mlp()
    config = sensitivity(model, _evaluate, ratios=RATIOS).suggest(2.0)
    secateurs.L1NormPruner(model, config).compress()
    assert _zero_rows(model[0]) == 0.2 and _zero_rows(model[2]) == 0.5 and _zero_rows(model[4]) == 0.5


def test_selection_by_names_types_and_the_output_layer_with_dummy_input():
    model, example = _mlp(), torch.randn(2, 4)
    assert sensitivity(model, _evaluate, ratios=(0.5,), op_names=["2"]).layers == ("2",)
    assert sensitivity(model, _evaluate, ratios=(0.5,), op_types=["Linear"], op_names=["0", "4"]).layers == ("0", "4")
    # With a trace, the layer whose output is the model's output is analysed only when named.
    assert sensitivity(model, _evaluate, ratios=(0.5,), dummy_input=example).layers == ("0", "2")
    named = sensitivity(model, _evaluate, ratios=(0.5,), dummy_input=example, op_names=["4"])
    assert named.layers == ("4",) and named.scores["4"] == (_expected(0.1, 0.5),)


def test_with_dummy_input_the_score_is_that_of_the_really_pruned_model():
    model, example = _mlp(), torch.randn(2, 4)

    def next_columns(m: nn.Module) -> float:  # the next layer's input columns are masked too
        return -float((m[2].weight == 0).all(dim=0).sum())

    result = sensitivity(model, next_columns, ratios=(0.3,), op_names=["0"], dummy_input=example)
    assert result.scores["0"] == (-3.0,)
    assert sensitivity(model, next_columns, ratios=(0.3,), op_names=["0"]).scores["0"] == (0.0,)


@pytest.mark.parametrize("pruner", ["level", "l2norm", "fpgm"])
def test_every_one_shot_pruner_is_accepted(pruner):
    result = sensitivity(_mlp(), _evaluate, pruner=pruner, ratios=(0.5,), op_names=["0"])
    assert result.pruner == pruner and len(result.scores["0"]) == 1


@pytest.mark.parametrize("pruner", ["taylorfo", "slim", "agp", "linear", "lottery", "movement", "amc"])
def test_pruners_that_need_training_are_refused(pruner):
    with pytest.raises(ValueError, match=r"one-shot pruner \(level, l1norm, l2norm, fpgm\)"):
        sensitivity(_mlp(), _evaluate, pruner=pruner)


@pytest.mark.parametrize("ratios, exc", [
    ((), ValueError), ((0.0, 0.5), ValueError), ((0.5, 1.0), ValueError), ((0.5, 0.2), ValueError),
    ((0.2, 0.2), ValueError), ((float("nan"),), ValueError), ("0.5", TypeError), (0.5, TypeError),
    ((True,), TypeError), (("0.5",), TypeError),
])
def test_bad_ratios_are_refused(ratios, exc):
    with pytest.raises(exc, match="'ratios'"):
        sensitivity(_mlp(), _evaluate, ratios=ratios)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"pruner": "l1nrom"}, KeyError, "did you mean 'l1norm'"),
    ({"pruner": secateurs.L1NormPruner}, TypeError, "'pruner'"),
    ({"op_types": ["Conv2d"]}, ValueError, "no layer selected"),
    ({"op_names": ["9"]}, ValueError, "'op_names' names '9'"),
    ({"op_names": "0"}, TypeError, "'op_names'"),
    ({"op_types": []}, ValueError, "'op_types'"),
    ({"op_types": ["ReLU"]}, ValueError, "cannot prune layer '1'"),
    ({"progress": "yes"}, TypeError, "'progress'"),
])
def test_bad_arguments_are_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sensitivity(_mlp(), _evaluate, **kwargs)


@pytest.mark.parametrize("evaluate, exc", [
    (None, TypeError), (lambda m: "good", TypeError), (lambda m: None, TypeError),
    (lambda m: float("nan"), ValueError), (lambda m: float("inf"), ValueError),
])
def test_bad_evaluate_is_refused(evaluate, exc):
    with pytest.raises(exc, match="evaluate"):
        sensitivity(_mlp(), evaluate, ratios=(0.5,))


def test_a_one_element_tensor_score_is_read_as_its_number():
    result = sensitivity(_mlp(), lambda m: torch.tensor(_evaluate(m)), ratios=(0.5,), op_names=["0"])
    assert result.scores["0"] == pytest.approx((-5.0,))


def test_progress_counts_evaluations(capsys):
    sensitivity(_mlp(), _evaluate, ratios=(0.1, 0.2), progress=True)
    assert "sensitivity evaluation 6/6" in capsys.readouterr().err


def test_dict_markdown_and_plot(tmp_path):
    result = sensitivity(_mlp(), _evaluate, ratios=(0.1, 0.5))
    data = json.loads(json.dumps(result.to_dict()))
    assert data == {"pruner": "l1norm", "baseline": 0.0, "ratios": [0.1, 0.5], "layers": ["0", "2", "4"],
                    "scores": {k: list(v) for k, v in result.scores.items()}}
    markdown = result.to_markdown()
    assert str(result) == markdown
    assert "baseline (dense model): 0" in markdown
    assert "| layer | 0.1 | 0.5 |" in markdown
    assert "| `0` | -1 | -5 |" in markdown
    assert result.plot(tmp_path / "s.png") == tmp_path / "s.png"
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError, match="did you mean .2."):
        result.drop("2x", 0.1)
    with pytest.raises(ValueError, match="0.3 was not analysed"):
        result.drop("0", 0.3)


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    result = SensitivityResult(baseline=1.0, ratios=(0.5,), layers=("a",), scores={"a": (0.5,)}, pruner="l1norm")
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        result.plot(tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


# -- the command ------------------------------------------------------------------------

MODEL_PY = textwrap.dedent("""
    import torch
    import torch.nn as nn

    import secateurs.datasets

    _DATA = []


    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                             nn.Linear(16, 10))


    def evaluate(model):
        if not _DATA:
            images, labels = secateurs.datasets.load_mnist_5k()
            _DATA.extend((images[::10], labels[::10]))  # 500 real digits, 50 of each class
        images, labels = _DATA
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(model(images), labels))
""")


def _secateurs(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "secateurs", "sensitivity", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "model.py").write_text(MODEL_PY, encoding="utf-8")
    return folder


def _user_module(folder):
    spec = importlib.util.spec_from_file_location("_sensitivity_test_user_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_writes_the_same_numbers_as_the_function(user_files):
    run = _secateurs("model.py:make", "--evaluate", "model.py:evaluate", "--input-shape", "1,1,28,28",
                     "--ratios", "0.25,0.5,0.75", "--max-drop", "0.005", "--out", "run", "--json", "--quiet",
                     cwd=user_files)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    printed = json.loads(run.stdout)
    out = user_files / "run"
    assert sorted(p.name for p in out.iterdir()) == ["sensitivity.json", "sensitivity.md", "sensitivity.png",
                                                     "suggested_config.json"]
    written = json.loads((out / "sensitivity.json").read_text(encoding="utf-8"))
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    user = _user_module(user_files)
    result = sensitivity(user.make().eval(), user.evaluate, ratios=(0.25, 0.5, 0.75),
                         dummy_input=torch.randn(1, 1, 28, 28))
    assert written == result.to_dict()
    assert written["layers"] == ["1", "3"]  # the classifier "5" is a model output, not named
    assert printed == result.to_dict() | {"suggested": result.suggest(0.005), "out": "run"}
    assert json.loads((out / "suggested_config.json").read_text(encoding="utf-8")) == result.suggest(0.005)
    assert (out / "sensitivity.md").read_text(encoding="utf-8") == result.to_markdown()


@pytest.mark.parametrize("args, message", [
    (["--evaluate", "missing.py:evaluate"], "no such file 'missing.py'"),
    (["--evaluate", "model.py:evaluate", "--pruner", "l1nrom"], "did you mean 'l1norm'"),
    (["--evaluate", "model.py:evaluate", "--pruner", "taylorfo"], "one-shot pruner"),
    (["--evaluate", "model.py:evaluate", "--ratios", "0.5,1.5"], "--ratios '0.5,1.5'"),
    (["--evaluate", "model.py:evaluate", "--ratios", "0.5,half"], "--ratios '0.5,half'"),
    (["--evaluate", "model.py:evaluate", "--max-drop", "-1"], "--max-drop"),
])
def test_bad_input_exits_2_with_one_line_and_no_folder(user_files, args, message):
    run = _secateurs("model.py:make", *args, "--input-shape", "1,1,28,28", "--out", "bad", cwd=user_files)
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1
    assert run.stderr.startswith("secateurs sensitivity: error: ") and message in run.stderr
    assert not (user_files / "bad").exists()


def test_help_has_an_example(capsys):
    from secateurs.cli import main

    with pytest.raises(SystemExit):
        main(["sensitivity", "--help"])
    assert "secateurs sensitivity model.py:make --evaluate model.py:evaluate" in capsys.readouterr().out
