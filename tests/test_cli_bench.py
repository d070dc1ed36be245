"""`secateurs bench`, run in subprocesses as a user runs it, and the library's measure_latency.

Times are only checked to be positive: the machine running the tests is shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import secateurs
from _cli import run, error_line, make_run_folder, SHAPE
from secateurs.cli._load import load_model
from secateurs.cli.bench import _unaligned
from secateurs.latency import measure_latency, repeat_batch

FAST = ("--repeats", "2", "--warmup", "1")

torchvision = pytest.importorskip("torchvision")








@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def run_folder(work) -> Path:
    return make_run_folder(work / "run")


def test_dense_against_pruned_gives_a_row_per_setting_with_the_macs_ratio(work, run_folder):
    markdown = work / "latency.md"
    done = run("bench", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--pruned", str(run_folder),
               "--threads", "1,2", "--batch-sizes", "1,2", *FAST, "--json", "--markdown", str(markdown), cwd=work)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = result["rows"]
    assert [(r["threads"], r["batch_size"], r["compiled"]) for r in rows] == \
        [(1, 1, False), (1, 2, False), (2, 1, False), (2, 2, False)]
    for r in rows:
        assert r["error"] is None
        assert r["dense_ms"] > 0 and r["pruned_ms"] > 0 and r["dense_min_ms"] > 0 and r["pruned_min_ms"] > 0
        assert r["latency_ratio"] == pytest.approx(r["dense_ms"] / r["pruned_ms"])

    x = torch.randn(SHAPE)
    dense_macs, dense_params, _ = secateurs.count_flops_params(torchvision.models.resnet18().eval(), x)
    pruned_macs, pruned_params, _ = secateurs.count_flops_params(load_model(str(run_folder)).model, x)
    assert result["macs"] == {"dense": dense_macs, "pruned": pruned_macs}
    assert result["macs_ratio"] == pytest.approx(dense_macs / pruned_macs)
    assert result["params_ratio"] == pytest.approx(dense_params / pruned_params)
    assert all(r["macs_ratio"] == result["macs_ratio"] for r in rows)

    lines = markdown.read_text(encoding="utf-8").splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| threads | batch | mode | dense ms | pruned ms | latency ratio | MACs ratio")
    assert len(table) == 2 + len(rows)
    assert f"{result['macs_ratio']:.2f}x" in table[2]


def test_one_model_alone_on_a_hugging_face_model_prints_a_table(work):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    transformers.BertModel(config).save_pretrained(work / "bert")
    done = run("bench", f"hf:{work / 'bert'}", "--batch-sizes", "1,3", *FAST, cwd=work)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("model: hf:") and "parameters" in lines[0]
    assert lines[1].split() == ["threads", "batch", "mode", "median", "ms", "min", "ms"]
    assert [line.split()[:3] for line in lines[3:]] == [["1", "1", "eager"], ["1", "3", "eager"]]
    assert all(float(line.split()[3]) > 0 for line in lines[3:])


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads '0': every value must be an integer >= 1"),
    (["--batch-sizes", "1,x"], "--batch-sizes '1,x' is not a comma-separated list"),
    (["--pruned", "nowhere"], "--pruned 'nowhere' is not a folder"),
    (["--markdown", "no/such/folder/t.md"], "--markdown 'no/such/folder/t.md'"),
])
def test_bad_input_exits_2_with_one_line(work, args, message):
    done = run("bench", "torchvision:resnet18", *args, cwd=work)
    assert done.returncode == 2, done.stderr
    assert error_line(done).startswith(f"secateurs bench: error: {message}")
    assert done.stdout == ""


def test_channel_counts_off_multiples_of_8_are_listed_for_pruned_layers_only():
    dense = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 12, 3), nn.Flatten(), nn.Linear(4, 10))
    pruned = nn.Sequential(nn.Conv2d(3, 13, 3), nn.Conv2d(13, 12, 3), nn.Flatten(), nn.Linear(4, 10))
    assert _unaligned(dense, pruned) == [{"name": "0", "type": "Conv2d", "channels": 13, "dense_channels": 16}]


def test_measure_latency_times_models_in_turn_and_restores_threads():
    threads = torch.get_num_threads()
    models = {"a": nn.Linear(4, 8), "b": nn.Linear(4, 2)}
    rows = measure_latency(models, {"input": torch.randn(1, 4)}, threads=(1, 2), batch_sizes=(1, 5), repeats=2,
                           warmup=0)
    assert torch.get_num_threads() == threads
    assert [(r["model"], r["threads"], r["batch_size"]) for r in rows] == [
        (m, t, b) for t in (1, 2) for b in (1, 5) for m in ("a", "b")]
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["error"] is None for r in rows)
    batch = repeat_batch((torch.arange(2).view(2, 1), torch.tensor(7.0)), 5)
    assert batch[0].flatten().tolist() == [0, 1, 0, 1, 0] and batch[1].item() == 7.0
    with pytest.raises(ValueError, match="'repeats' parameter of measure_latency"):
        measure_latency(nn.Linear(4, 2), torch.randn(1, 4), repeats=0)


FACTORY = """
import torch, torch.nn as nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval(), torch.randn(1, 16)
"""


def test_compiled_rows_sit_beside_eager_ones(work):
    (work / "tiny.py").write_text(FACTORY, encoding="utf-8")
    done = run("bench", "tiny.py:make", "--compile", *FAST, "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [r["compiled"] for r in rows] == [False, True]
    if rows[1]["error"] is not None:
        pytest.skip(f"torch.compile does not work here: {rows[1]['error']}")
    assert rows[1]["median_ms"] > 0
