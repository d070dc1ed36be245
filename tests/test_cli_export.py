"""`secateurs export`, run in subprocesses as a user runs it, and the library's export_onnx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from _cli import run, error_line, make_run_folder
from secateurs.cli._load import load_model
from secateurs.export import export_onnx, export_torch


ort = pytest.importorskip("onnxruntime")
torchvision = pytest.importorskip("torchvision")








def onnx_outputs(path: Path, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {k: v.numpy() for k, v in feeds.items()})]


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1e-12)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def run_folder(work) -> Path:
    return make_run_folder(work / "run")


@pytest.fixture(scope="module")
def resnet_weights(work) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    path = work / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_onnx_and_torch_export_agree_with_pytorch_at_two_batch_sizes(work, resnet_weights):
    weights, model = resnet_weights
    out = work / "dense"
    out.mkdir()
    done = run("export", "torchvision:resnet18", "--weights", str(weights), "--input-shape", "1,3,64,64",
               "--onnx", str(out / "r18.onnx"), "--torch-export", str(out / "r18.pt2"), "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    onnx_result = result["onnx"]
    assert onnx_result["path"] == str(out / "r18.onnx")
    assert onnx_result["exporter"] in ("dynamo", "torchscript")
    assert isinstance(onnx_result["opset"], int)
    assert onnx_result["inputs"] == ["input"]
    assert onnx_result["batch_sizes_checked"] == [1, 3]
    assert 0 <= onnx_result["max_rel_diff"] <= 1e-4 and onnx_result["max_abs_diff"] >= 0
    assert result["torch_export"]["batch_sizes_checked"] == [1, 3]
    assert result["state"] == "dense"

    program = torch.export.load(str(out / "r18.pt2")).module()
    for batch in (1, 2):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            want = model(x)
            assert_close(program(x), want)
        (got,) = onnx_outputs(out / "r18.onnx", {"input": x})
        assert_close(got, want)


def test_a_run_folder_exports_its_pruned_model(work, run_folder):
    target = work / "pruned.onnx"
    done = run("export", str(run_folder), "--onnx", str(target), cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "exported ONNX" in done.stdout and "relative" in done.stdout
    pruned = load_model(str(run_folder)).model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = pruned(x)
    (got,) = onnx_outputs(target, {"input": x})
    assert_close(got, want)


def test_a_hugging_face_model_keeps_its_input_names(work):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(work / "bert")
    target = work / "bert.onnx"
    done = run("export", f"hf:{work / 'bert'}", "--onnx", str(target), "--json", "--quiet", cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["onnx"]["inputs"] == ["input_ids", "attention_mask"]

    model = transformers.BertModel.from_pretrained(work / "bert").eval()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask)
    got = onnx_outputs(target, {"input_ids": ids, "attention_mask": mask})
    assert len(got) == 2
    assert_close(got[0], want.last_hidden_state)
    assert_close(got[1], want.pooler_output)


@pytest.mark.parametrize("case", ["missing model file", "missing weights", "missing folder", "nothing to write"])
def test_bad_input_exits_2_with_one_line_and_no_file(work, case):
    folder = work / f"bad-{case.replace(' ', '-')}"
    folder.mkdir()
    args = {
        "missing model file": ["nowhere.py:make", "--onnx", "m.onnx"],
        "missing weights": ["torchvision:resnet18", "--weights", "nowhere.pt", "--onnx", "m.onnx"],
        "missing folder": ["torchvision:resnet18", "--onnx", "no/such/folder/m.onnx"],
        "nothing to write": ["torchvision:resnet18"],
    }[case]
    done = run("export", *args, cwd=folder)
    assert done.returncode == 2, done.stderr
    assert error_line(done).startswith("secateurs export: error: ")
    assert done.stdout == ""
    assert list(folder.iterdir()) == []


def test_a_failed_check_exits_1_and_leaves_no_file(work, run_folder):
    folder = work / "strict"
    folder.mkdir()
    # No ONNX Runtime run of a real network matches PyTorch bit for bit.
    done = run("export", str(run_folder), "--onnx", "m.onnx", "--torch-export", "m.pt2", "--tolerance", "0",
               cwd=folder)
    assert done.returncode == 1, done.stderr
    assert error_line(done).startswith("secateurs export: failed: the ONNX model's output differs")
    assert list(folder.iterdir()) == []


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.a(x) * self.b(y), {"sum": self.a(x) + self.b(y)}


def test_export_onnx_takes_a_tuple_and_compares_every_output(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    example = (torch.randn(1, 6), torch.randn(1, 3))
    result = export_onnx(model, example, tmp_path / "two.onnx")
    assert result["inputs"] == ["input_0", "input_1"]
    assert result["batch_sizes_checked"] == [1, 3]
    x, y = torch.randn(5, 6), torch.randn(5, 3)
    got = onnx_outputs(tmp_path / "two.onnx", {"input_0": x, "input_1": y})
    with torch.no_grad():
        product, rest = model(x, y)
    assert_close(got[0], product)
    assert_close(got[1], rest["sum"])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".data")) == ["two.onnx"]


def test_export_torch_reports_why_torch_export_cannot_capture_a_model(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[x > 0].sum() if x.sum() > 0 else x.mean()

    with pytest.raises(RuntimeError, match="torch.export cannot export DataDependent"):
        export_torch(DataDependent(), torch.randn(2, 3), tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []
